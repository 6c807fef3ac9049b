// The drawing page: strokes on a canvas; on each stroke's end the canvas goes to the model as
// a PNG ({"instances": [{"b64": ...}]}), and the server prepares it as MNIST's digits were.
// Everything stays on this server: no other site is contacted.
"use strict";

const PEN_WIDTH = 20; // pixels of the 280-pixel canvas: MNIST's strokes are about 2 of its 28 pixels
const DIGITS = 10;

const pad = document.getElementById("pad");
const pen = pad.getContext("2d");
const inputView = document.getElementById("input");
const labelOutput = document.getElementById("label");
const bars = document.getElementById("probabilities");
const statusLine = document.getElementById("status");
const predictUrl = "v1/models/" + encodeURIComponent(document.body.dataset.model) + ":predict";

let drawing = false;
let drawn = false; // whether the canvas holds any stroke
let busy = false; // a prediction request is in flight
let again = false; // the drawing changed while it was in flight: ask once more after it
let cleared = 0; // times Clear was pressed: an answer about a cleared drawing is not shown

function clearPad() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
}

function padPoint(event) {
  // The drawing area starts inside the border and may be shown scaled.
  const box = pad.getBoundingClientRect();
  const x = event.clientX - box.left - pad.clientLeft;
  const y = event.clientY - box.top - pad.clientTop;
  return [x * (pad.width / pad.clientWidth), y * (pad.height / pad.clientHeight)];
}

function startStroke(event) {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  drawn = true;
  const [x, y] = padPoint(event);
  pen.beginPath();
  pen.moveTo(x, y);
  pen.lineTo(x, y); // a tap leaves a dot
  pen.stroke();
}

function continueStroke(event) {
  if (!drawing) {
    return;
  }
  event.preventDefault();
  const [x, y] = padPoint(event);
  pen.lineTo(x, y);
  pen.stroke();
}

function endStroke(event) {
  if (!drawing) {
    return;
  }
  drawing = false;
  if (pad.hasPointerCapture(event.pointerId)) {
    pad.releasePointerCapture(event.pointerId);
  }
  predict();
}

async function predict() {
  if (!drawn) {
    return;
  }
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  document.body.dataset.busy = "true";
  const png = pad.toDataURL("image/png").split(",", 2)[1];
  const asked = cleared;
  try {
    const response = await fetch(predictUrl, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({instances: [{b64: png}]}),
    });
    const answer = await response.json();
    if (!response.ok) {
      throw new Error(answer.error || "the server answered " + response.status);
    }
    if (asked === cleared) {
      showPrediction(answer.predictions[0]);
      statusLine.textContent = "";
    }
  } catch (error) {
    statusLine.textContent = "Error: " + error.message;
  } finally {
    busy = false;
    if (again) {
      again = false;
      predict();
    } else {
      document.body.dataset.busy = "false";
    }
  }
}

function showPrediction(prediction) {
  labelOutput.textContent = String(prediction.label);
  prediction.probabilities.forEach((probability, digit) => {
    const row = bars.children[digit];
    const percent = (100 * probability).toFixed(1) + " %";
    row.querySelector(".fill").style.width = (100 * probability).toFixed(2) + "%";
    row.querySelector(".value").textContent = percent;
    row.setAttribute("aria-label", "digit " + digit + ": " + percent);
    row.classList.toggle("best", digit === prediction.label);
  });
  if (prediction.input) {
    showInput(prediction.input);
  }
}

function showInput(rows) {
  const size = rows.length;
  const small = document.createElement("canvas");
  small.width = small.height = size;
  const image = small.getContext("2d").createImageData(size, size);
  rows.flat().forEach((value, index) => {
    image.data.set([value, value, value, 255], 4 * index);
  });
  small.getContext("2d").putImageData(image, 0, 0);
  const view = inputView.getContext("2d");
  view.imageSmoothingEnabled = false;
  view.drawImage(small, 0, 0, inputView.width, inputView.height);
}

function buildBars() {
  for (let digit = 0; digit < DIGITS; digit++) {
    const row = document.createElement("li");
    row.setAttribute("aria-label", "digit " + digit + ": no answer yet");
    row.innerHTML = '<span aria-hidden="true"></span><div class="bar" aria-hidden="true"><div class="fill"></div></div>'
      + '<span class="value" aria-hidden="true">-</span>';
    row.firstChild.textContent = String(digit);
    bars.appendChild(row);
  }
}

function resetAnswer() {
  cleared += 1;
  again = false;
  clearPad();
  labelOutput.textContent = "-";
  statusLine.textContent = "";
  Array.from(bars.children).forEach((row, digit) => {
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".value").textContent = "-";
    row.setAttribute("aria-label", "digit " + digit + ": no answer yet");
    row.classList.remove("best");
  });
  const view = inputView.getContext("2d");
  view.fillStyle = "#000";
  view.fillRect(0, 0, inputView.width, inputView.height);
}

pen.strokeStyle = "#fff";
pen.lineWidth = PEN_WIDTH;
pen.lineCap = "round";
pen.lineJoin = "round";
buildBars();
resetAnswer();
document.body.dataset.busy = "false";
pad.addEventListener("pointerdown", startStroke);
pad.addEventListener("pointermove", continueStroke);
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
document.getElementById("clear").addEventListener("click", resetAnswer);
