"""image_folder: a torchexp project that trains on a folder of image files. Run `python -m image_folder --help`."""
