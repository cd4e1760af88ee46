// selvad page: live progress (polls /api/status every 2 s while a run is active, every 5 s
// on an idle dashboard to notice a run starting, never while the tab is hidden) and A/B
// listening between checkpoints (run page) or runs (sweep page), and between checkpoints on
// each audition video (run page): one player each; switching keeps the playback position; after an action (Train now, Retry, Cancel) the daemon's
// answer replaces "waiting for the daemon's answer" (polled, then the page reloads to
// show what changed). No inline script (CSP).
"use strict";

function fmtDuration(s) {
  if (s === null || s === undefined) return "?";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

function showRun(run) {
  const section = document.querySelector(`#live section[data-run="${CSS.escape(run.id)}"]`);
  if (!section) return;
  const fields = {
    step: run.step ?? 0, total_steps: run.total_steps ?? "?",
    loss: run.loss === null ? "-" : run.loss.toFixed(4),
    samples_per_s: run.samples_per_s ? run.samples_per_s.toFixed(1) : "-",
    eta: run.total_steps && (run.step ?? 0) >= run.total_steps
      ? "last checkpoint and sample next" : `about ${fmtDuration(run.eta_s)} left`,
  };
  for (const [k, v] of Object.entries(fields)) {
    const el = section.querySelector(`[data-field="${k}"]`);
    if (el) el.textContent = v;
  }
  const bar = section.querySelector("progress.bar");
  if (bar && run.total_steps) { bar.max = run.total_steps; bar.value = run.step ?? 0; }
}

// the runs table on the dashboard: the same poll refreshes the step and loss cells
function showRows(runs) {
  for (const run of runs) {
    const row = document.querySelector(`tr[data-run="${CSS.escape(run.id)}"]`);
    if (!row) continue;
    const step = row.querySelector('[data-cell="step"]'), loss = row.querySelector('[data-cell="loss"]');
    if (step && run.total_steps) step.textContent = `${run.step ?? 0}/${run.total_steps}`;
    if (loss && run.loss !== null && run.loss !== undefined) loss.textContent = run.loss.toFixed(4);
  }
}

const LIVE_POLL_MS = 2000, IDLE_POLL_MS = 5000;

// the runs #live shows (data-runs): on the dashboard every active run (data-scope "all": a
// run starting or ending reloads the page), on a run page that run alone ("one")
function shownRuns(live) { return live.dataset.runs.split(" ").filter(Boolean); }

async function poll() {
  const live = document.getElementById("live");
  if (!live) return;
  if (document.hidden) {  // a background tab costs the daemon nothing; poll again when shown
    document.addEventListener("visibilitychange", poll, { once: true });
    return;
  }
  try {
    const r = await fetch("/api/status", { cache: "no-store" });
    const status = await r.json();
    const shown = shownRuns(live), active = status.current.map((x) => x.id);
    const changed = live.dataset.scope === "all"
      ? shown.length !== active.length || shown.some((id) => !active.includes(id))
      : shown.some((id) => !active.includes(id));
    if (changed) { location.reload(); return; }  // a run started or ended
    showRows(status.current);
    for (const run of status.current) showRun(run);
  } catch (e) { /* daemon restarting: try again */ }
  setTimeout(poll, shownRuns(live).length ? LIVE_POLL_MS : IDLE_POLL_MS);
}

// a new source for an <audio> or <video> player, playing on from the same moment when it was playing
function switchSource(media, src) {
  const t = media.currentTime, playing = !media.paused;
  media.src = src;
  media.addEventListener("loadedmetadata", () => {
    media.currentTime = Math.min(t, media.duration || t);
    if (playing) media.play();
  }, { once: true });
}

function setupAB() {
  const audio = document.getElementById("ab-audio");
  if (!audio) return;
  const buttons = { a: document.getElementById("ab-play-a"), b: document.getElementById("ab-play-b"),
                    ref: document.getElementById("ab-play-ref") };
  const srcOf = { a: () => document.getElementById("ab-a").value,
                  b: () => document.getElementById("ab-b").value,
                  // the run page's reference, or on a sweep page the reference of A's run
                  ref: () => document.getElementById("ab-a").selectedOptions[0]?.dataset.ref
                             || buttons.ref.dataset.src };
  function showPictures() {  // the spectrograms of A's and B's choices, when there are some
    for (const side of ["a", "b"]) {
      const img = document.getElementById(`ab-pic-${side}`);
      const option = document.getElementById(`ab-${side}`).selectedOptions[0];
      const src = option?.dataset.spectrogram;
      if (!img) continue;
      img.parentElement.hidden = !src;
      if (src) {
        img.src = src;
        img.nextElementSibling.textContent = `${side.toUpperCase()}: ${option.textContent}`;
      }
    }
  }
  function choose(which) {
    showPictures();
    for (const [k, b] of Object.entries(buttons)) if (b) b.classList.toggle("on", k === which);
    audio.dataset.which = which;
    switchSource(audio, srcOf[which]());
  }
  for (const [k, b] of Object.entries(buttons)) if (b) b.addEventListener("click", () => choose(k));
  for (const id of ["ab-a", "ab-b"]) {
    document.getElementById(id).addEventListener("change", () => choose(audio.dataset.which || "a"));
  }
  audio.dataset.which = "a";
  audio.src = srcOf.a();
  showPictures();
}

// the run page's A/B on one audition video (section.ab-video): two checkpoints' renders, one player
function setupVideoAB(section) {
  const player = section.querySelector("video.ab-player");
  const selects = { a: section.querySelector("select.ab-a"), b: section.querySelector("select.ab-b") };
  const buttons = { a: section.querySelector(".ab-play-a"), b: section.querySelector(".ab-play-b") };
  function choose(which) {
    for (const [k, b] of Object.entries(buttons)) b.classList.toggle("on", k === which);
    player.dataset.which = which;
    switchSource(player, selects[which].value);
  }
  for (const [k, b] of Object.entries(buttons)) b.addEventListener("click", () => choose(k));
  for (const s of Object.values(selects)) s.addEventListener("change", () => choose(player.dataset.which));
  player.dataset.which = "a";
  player.src = selects.a.value;
}

const ANSWER_POLL_MS = 500, ANSWER_WAIT_MS = 120000;

// the notice of an action the daemon has not answered yet: ask until it has, then reload
// (the same URL, ?request=ID: the server renders the answer and the new state)
async function waitForAnswer(notice, since) {
  try {
    const r = await fetch(`/api/requests/${encodeURIComponent(notice.dataset.request)}`,
                          { cache: "no-store" });
    const answer = await r.json();
    if (answer.handled) {
      notice.textContent = answer.result;
      delete notice.dataset.waiting;
      location.replace(location.href);
      return;
    }
  } catch (e) { /* daemon restarting: try again */ }
  if (Date.now() - since > ANSWER_WAIT_MS) {
    notice.textContent = "request recorded; the daemon has not answered yet (is it running? "
      + "`systemctl status selvad`); it acts on it when it runs";
    return;
  }
  setTimeout(() => waitForAnswer(notice, since), ANSWER_POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  setupAB();
  for (const section of document.querySelectorAll("section.ab-video")) setupVideoAB(section);
  const notice = document.getElementById("notice");
  if (notice && notice.dataset.waiting) waitForAnswer(notice, Date.now());
  const live = document.getElementById("live");
  if (live) setTimeout(poll, shownRuns(live).length ? LIVE_POLL_MS : IDLE_POLL_MS);
});
