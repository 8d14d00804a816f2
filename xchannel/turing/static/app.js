// The colorization Turing test page (Zhang, Isola, Efros, ECCV 2016, Sec. 3.1).
//
// Per trial: fetch both images (each URL is an opaque one-fetch token), show them side by side for
// `display_ms` (1 s in the paper), hide them, then wait -- as long as it takes -- for a click on the side the
// participant believes is fake. The page never knows which side is fake: the server checks the answer and, on
// practice trials only, says whether it was right. `document.body.dataset.state` names the current step
// (intro, loading, showing, respond, sending, feedback, break, done, error).
"use strict";

(() => {
  const STORAGE_KEY = "xc_participant";
  const $ = (id) => document.getElementById(id);
  const PANELS = ["intro", "trial", "feedback", "break", "done", "error"];

  let participant = null;
  let session = null;       // {n_practice, n_test, display_ms}
  let trial = null;         // {index, practice, number, of, images: {left, right}}
  let pendingNext = null;   // what to run when the participant presses Next / Start
  let hiddenAt = 0;
  let blobUrls = [];
  let reloads = 0;

  function setState(state, panel) {
    document.body.dataset.state = state;
    if (panel) for (const p of PANELS) $(p).hidden = p !== panel;
  }

  function storedParticipant() {
    const q = new URLSearchParams(window.location.search);
    const fromUrl = q.get("participant") || q.get("workerId");
    if (fromUrl) return fromUrl;
    try { return window.localStorage.getItem(STORAGE_KEY); } catch (e) { return null; }
  }

  function remember(pid) {
    participant = pid;
    try { window.localStorage.setItem(STORAGE_KEY, pid); } catch (e) { /* cookie still identifies us */ }
  }

  async function post(path, payload) {
    const response = await fetch(path, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(Object.assign({participant}, payload)),
      credentials: "same-origin",
      cache: "no-store",
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* non-JSON error page */ }
    return {ok: response.ok, status: response.status, data};
  }

  function fail(message, retry) {
    $("error-text").textContent = message;
    $("retry").hidden = !retry;
    setState("error", "error");
  }

  function finish(code, text) {
    if (text) $("done-text").textContent = text;
    $("completion-code").textContent = code || "";
    setState("done", "done");
  }

  function releaseImages() {
    for (const side of ["left", "right"]) {
      const img = $(`img-${side}`);
      img.hidden = true;
      img.removeAttribute("src");
    }
    for (const url of blobUrls) URL.revokeObjectURL(url);
    blobUrls = [];
  }

  async function loadImage(side, url) {
    const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    if (!response.ok) throw new Error(`image ${response.status}`);
    const objectUrl = URL.createObjectURL(await response.blob());
    blobUrls.push(objectUrl);
    const img = $(`img-${side}`);
    img.src = objectUrl;
    await img.decode();
  }

  // (Re)start or resume the session; the server hands out the current trial with fresh image tokens.
  async function begin() {
    setState("loading", "trial");
    let result;
    try {
      result = await post("/api/session", {});
    } catch (e) {
      return fail("Cannot reach the server. Check your connection and try again.", true);
    }
    const data = result.data;
    if (data.participant) remember(data.participant);
    if (result.status === 409 && data.error === "already_completed") {
      return finish(data.completion_code, data.message);
    }
    if (!result.ok) return fail(data.message || `Server error (${result.status}).`, true);
    session = data;
    $("n-test-2").textContent = String(session.n_test);
    if (!data.trial) return finish(data.completion_code);
    runTrial(data.trial);
  }

  async function runTrial(next) {
    trial = next;
    setButtons(false);
    releaseImages();
    $("progress").textContent = trial.practice
      ? `Practice ${trial.number} of ${trial.of}` : `Pair ${trial.number} of ${trial.of}`;
    setState("loading", "trial");
    try {
      await Promise.all([loadImage("left", trial.images.left), loadImage("right", trial.images.right)]);
    } catch (e) {
      // Tokens are good for one fetch; after a failed or repeated load, ask the server to re-issue the trial.
      releaseImages();
      if (reloads++ < 3) return begin();
      return fail("The images could not be loaded. Please try again.", true);
    }
    reloads = 0;
    $("img-left").hidden = false;
    $("img-right").hidden = false;
    setState("showing");
    requestAnimationFrame(() => {
      window.setTimeout(() => {
        releaseImages();
        hiddenAt = performance.now();
        setState("respond");
        setButtons(true);
      }, session.display_ms);
    });
  }

  function setButtons(enabled) {
    $("choice-left").disabled = !enabled;
    $("choice-right").disabled = !enabled;
  }

  async function choose(side) {
    if (document.body.dataset.state !== "respond") return;
    const responseMs = performance.now() - hiddenAt;
    setButtons(false);
    setState("sending");
    let result;
    try {
      result = await post("/api/answer", {index: trial.index, clicked: side, response_ms: responseMs});
    } catch (e) {
      return fail("Cannot reach the server: your earlier answers are saved. Try again to continue.", true);
    }
    const data = result.data;
    if (result.status === 409) return begin();  // stale tab or duplicate click: resume where the server is
    if (!result.ok) return fail(data.message || `Server error (${result.status}).`, true);
    const wasPractice = trial.practice;
    const next = data.trial;
    const proceed = () => {
      if (!next) return finish(data.completion_code);
      if (wasPractice && !next.practice) {
        pendingNext = () => runTrial(next);
        return setState("break", "break");
      }
      runTrial(next);
    };
    if (data.feedback) {
      const text = $("feedback-text");
      text.className = "feedback " + (data.feedback.correct ? "correct" : "incorrect");
      text.textContent = data.feedback.correct
        ? "Correct! That one had the fake colours."
        : `Incorrect: the ${data.feedback.fake_side} photo had the fake colours.`;
      pendingNext = proceed;
      return setState("feedback", "feedback");
    }
    proceed();
  }

  function advance() {
    const run = pendingNext;
    pendingNext = null;
    if (run) run();
  }

  document.addEventListener("DOMContentLoaded", () => {
    participant = storedParticipant();
    $("start").addEventListener("click", begin);
    $("retry").addEventListener("click", begin);
    $("continue").addEventListener("click", advance);
    $("begin-test").addEventListener("click", advance);
    $("choice-left").addEventListener("click", () => choose("left"));
    $("choice-right").addEventListener("click", () => choose("right"));
    document.addEventListener("keydown", (event) => {
      if (event.key === "ArrowLeft") choose("left");
      else if (event.key === "ArrowRight") choose("right");
    });
    setState("intro", "intro");
  });
})();
