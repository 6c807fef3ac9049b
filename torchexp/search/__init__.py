"""Hyperparameter search on Optuna, where every trial is an ordinary experiment that can
pause at a checkpoint and resume exactly.

Modules by concept: `options` (the search command's options, declared once), `space`
(the search space file), `storage` (journal file or database), `study` (study folder and
settings), `samplers` (grid, random, and TPE that sees paused trials), `pruners` (stop,
pause and promote: none, median, asha), `asha` (rungs and promotions), `scheduler` (claims
and the rules that pick work), `trial` (create, train and finish one trial), `report` (the
table), `dashboard`, and `run` (a search process). Importing this package does not import
optuna or torch; its modules do.
"""
