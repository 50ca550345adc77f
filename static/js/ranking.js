/* Ranking by keyboard, click and drag and drop.
 *
 * The server-rendered form works on its own (one rank <select> per image). This script only keeps those
 * selects in step with a faster way of choosing: press the images' numbers best first, click them in
 * order, or drag them into the "Your ranking" slots. CSP allows scripts from 'self' only, so everything
 * is wired here with addEventListener; nothing inline in the templates.
 */
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  const PANEL_KEYS = { g: "guidelines", "?": "shortcuts" };
  const SWAP_ON_ERROR = [400, 403, 404, 409];
  const prefetched = []; // keep Image objects alive until they have loaded

  /* ------------------------------------------------------------------ state per ranking form */

  function Ranker(form) {
    this.form = form;
    this.n = parseInt(form.dataset.count, 10) || 0;
    this.allowTies = form.dataset.ties === "true";
    this.groups = []; // tie groups of labels, best first
    this.history = []; // labels in the order they were placed, for undo
    this.tieArmed = false;
    this.panel = document.querySelector('.slots[data-form="' + form.id + '"]');
    this.panelSection = this.panel ? this.panel.closest(".order") : null;
    this.status = this.panelSection ? this.panelSection.querySelector(".order-status") : null;
    this.readSelects();
    this.wire();
    this.render();
  }

  Ranker.prototype.select = function (label) {
    return document.querySelector('select[name="rank_' + label + '"][form="' + this.form.id + '"]');
  };

  Ranker.prototype.card = function (label) {
    return this.form.querySelector('.cand[data-label="' + label + '"]');
  };

  Ranker.prototype.readSelects = function () {
    // After a refused submission the server sends the choices back; start from them.
    const byRank = new Map();
    for (let label = 1; label <= this.n; label++) {
      const sel = this.select(label);
      const value = sel ? parseInt(sel.value, 10) : NaN;
      if (!Number.isNaN(value)) {
        if (!byRank.has(value)) byRank.set(value, []);
        byRank.get(value).push(label);
      }
    }
    const ranks = Array.from(byRank.keys()).sort(function (a, b) { return a - b; });
    this.groups = ranks.map(function (r) { return byRank.get(r); });
    if (!this.allowTies) {
      // Duplicated ranks cannot be shown as one group here: split them, keep their order.
      const flat = [];
      this.groups.forEach(function (g) { g.forEach(function (l) { flat.push([l]); }); });
      this.groups = flat;
    }
    this.history = [].concat.apply([], this.groups);
  };

  Ranker.prototype.placed = function () {
    return [].concat.apply([], this.groups);
  };

  Ranker.prototype.rankOf = function (label) {
    let rank = 1;
    for (const group of this.groups) {
      if (group.indexOf(label) >= 0) return rank;
      rank += group.length;
    }
    return null;
  };

  Ranker.prototype.remove = function (label) {
    this.groups = this.groups
      .map(function (g) { return g.filter(function (l) { return l !== label; }); })
      .filter(function (g) { return g.length > 0; });
    this.history = this.history.filter(function (l) { return l !== label; });
  };

  Ranker.prototype.complete = function () {
    return this.placed().length === this.n;
  };

  Ranker.prototype.announce = function (text) {
    if (this.status) this.status.textContent = text;
  };

  /* Place next (keyboard, click) — or tied with the last group when "=" was pressed first. */
  Ranker.prototype.place = function (label) {
    if (label < 1 || label > this.n) return;
    const already = this.rankOf(label);
    if (already !== null) {
      this.tieArmed = false;
      this.announce("Image " + label + " is already at place " + already + ". Backspace undoes the last placement.");
      this.render(false);
      return;
    }
    if (this.tieArmed && this.allowTies && this.groups.length) {
      this.groups[this.groups.length - 1].push(label);
    } else {
      this.groups.push([label]);
    }
    this.tieArmed = false;
    this.history.push(label);
    this.render();
    this.announce("Image " + label + " placed " + ordinal(this.rankOf(label)) +
      (this.complete() ? ". All placed — press Enter to submit." : "."));
  };

  /* Drag and drop: put an image at a slot. On a filled slot it takes that place (the others move down),
   * or joins it as a tie where the category allows ties. */
  Ranker.prototype.placeAt = function (label, slotIndex) {
    this.remove(label);
    if (slotIndex >= this.groups.length) {
      this.groups.push([label]);
    } else if (this.allowTies) {
      this.groups[slotIndex].push(label);
    } else {
      this.groups.splice(slotIndex, 0, [label]);
    }
    this.history.push(label);
    this.render();
    this.announce("Image " + label + " placed " + ordinal(this.rankOf(label)) + ".");
  };

  Ranker.prototype.undo = function () {
    const label = this.history.pop();
    if (label === undefined) {
      this.announce("Nothing to undo.");
      return;
    }
    this.remove(label);
    this.render();
    this.announce("Removed image " + label + ".");
  };

  Ranker.prototype.clear = function () {
    this.groups = [];
    this.history = [];
    this.render();
    this.announce("Cleared.");
  };

  Ranker.prototype.render = function () {
    const self = this;
    for (let label = 1; label <= this.n; label++) {
      const rank = this.rankOf(label);
      const sel = this.select(label);
      if (sel) sel.value = rank === null ? "" : String(rank);
      const card = this.card(label);
      if (!card) continue;
      card.classList.toggle("placed", rank !== null);
      const badge = card.querySelector(".cand-rank");
      if (badge) badge.textContent = rank === null ? "" : ordinal(rank);
      const pick = card.querySelector(".cand-pick");
      if (pick) {
        pick.setAttribute("aria-pressed", rank === null ? "false" : "true");
        pick.setAttribute("aria-label", "Image " + label + (rank === null ? ", not placed" : ", placed " + ordinal(rank)));
      }
    }
    if (this.panel) {
      const slots = this.panel.querySelectorAll(".slot");
      slots.forEach(function (slot, i) {
        const body = slot.querySelector(".slot-body");
        const group = self.groups[i];
        slot.classList.toggle("filled", !!group);
        slot.classList.toggle("next", i === self.groups.length && !self.complete());
        body.textContent = "";
        if (group) {
          group.forEach(function (label) {
            const chip = document.createElement("span");
            chip.className = "chip";
            chip.draggable = true;
            chip.dataset.label = String(label);
            const img = self.card(label) && self.card(label).querySelector("img");
            if (img) {
              const thumb = document.createElement("img");
              thumb.src = img.currentSrc || img.src;
              thumb.alt = "";
              thumb.draggable = false;
              chip.appendChild(thumb);
            }
            const text = document.createElement("span");
            text.textContent = "Image " + label;
            chip.appendChild(text);
            body.appendChild(chip);
          });
        } else {
          body.textContent = i === 0 ? "Best" : i === slots.length - 1 ? "Worst" : "";
        }
      });
    }
    const submit = document.querySelector('button[type="submit"][form="' + this.form.id + '"]');
    if (submit) submit.classList.toggle("ready", this.complete());
    this.form.classList.toggle("complete", this.complete());
  };

  Ranker.prototype.submit = function () {
    if (!this.complete()) {
      const missing = this.n - this.placed().length;
      this.announce("Place " + missing + " more image" + (missing === 1 ? "" : "s") + " before submitting.");
      return;
    }
    const button = document.querySelector('button[type="submit"][form="' + this.form.id + '"]');
    if (this.form.requestSubmit) this.form.requestSubmit(button || undefined);
    else this.form.submit();
  };

  Ranker.prototype.wire = function () {
    const self = this;
    this.form.querySelectorAll(".cand").forEach(function (card) {
      const label = parseInt(card.dataset.label, 10);
      const pick = card.querySelector(".cand-pick");
      pick.addEventListener("click", function () {
        if (self.rankOf(label) !== null) {
          self.remove(label);
          self.render();
          self.announce("Removed image " + label + ".");
        } else {
          self.place(label);
        }
      });
      card.addEventListener("dragstart", function (e) {
        e.dataTransfer.setData("text/plain", String(label));
        e.dataTransfer.effectAllowed = "move";
        card.classList.add("dragging");
      });
      card.addEventListener("dragend", function () { card.classList.remove("dragging"); });
    });
    const grid = this.form.querySelector(".cands");
    if (grid) {
      // Dropping a chip back onto the images takes it out of the ranking.
      grid.addEventListener("dragover", function (e) { e.preventDefault(); });
      grid.addEventListener("drop", function (e) {
        const label = parseInt(e.dataTransfer.getData("text/plain"), 10);
        if (!Number.isNaN(label) && e.dataTransfer.getData("application/x-from-slot") === "1") {
          e.preventDefault();
          self.remove(label);
          self.render();
          self.announce("Removed image " + label + ".");
        }
      });
    }
    if (this.panel) {
      this.panel.addEventListener("dragstart", function (e) {
        const chip = e.target.closest && e.target.closest(".chip");
        if (!chip) return;
        e.dataTransfer.setData("text/plain", chip.dataset.label);
        e.dataTransfer.setData("application/x-from-slot", "1");
        e.dataTransfer.effectAllowed = "move";
      });
      this.panel.querySelectorAll(".slot").forEach(function (slot) {
        slot.addEventListener("dragover", function (e) {
          e.preventDefault();
          e.dataTransfer.dropEffect = "move";
          slot.classList.add("over");
        });
        slot.addEventListener("dragleave", function () { slot.classList.remove("over"); });
        slot.addEventListener("drop", function (e) {
          e.preventDefault();
          slot.classList.remove("over");
          const label = parseInt(e.dataTransfer.getData("text/plain"), 10);
          if (!Number.isNaN(label)) self.placeAt(label, parseInt(slot.dataset.pos, 10));
        });
      });
    }
    document.querySelectorAll('[data-action][data-form="' + this.form.id + '"]').forEach(function (button) {
      button.addEventListener("click", function () {
        if (button.dataset.action === "undo") self.undo();
        if (button.dataset.action === "clear") self.clear();
      });
    });
    // Someone using the selects directly (JS on, but they prefer them): follow their choice.
    this.form.querySelectorAll("select").forEach(function (sel) {
      sel.addEventListener("change", function () {
        self.readSelects();
        self.render();
      });
    });
  };

  /* ------------------------------------------------------------------ page-level wiring */

  function ordinal(n) {
    const s = ["th", "st", "nd", "rd"];
    const v = n % 100;
    return n + (s[(v - 20) % 10] || s[v] || s[0]);
  }

  function activeRanker() {
    const form = document.querySelector("form.ranker");
    return form && form._ranker ? form._ranker : null;
  }

  function typing(target) {
    if (!target || !target.tagName) return false;
    const tag = target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || target.isContentEditable;
  }

  function openPanel(name) {
    const panel = document.querySelector('details[data-panel="' + name + '"]');
    if (!panel) return;
    panel.open = !panel.open;
    if (panel.open) {
      const field = panel.querySelector("textarea, input:not([type=hidden])");
      (field || panel.querySelector("summary")).focus();
    }
  }

  function closePanels() {
    let closed = false;
    document.querySelectorAll("details[data-panel][open]").forEach(function (panel) {
      panel.open = false;
      closed = true;
    });
    return closed;
  }


  /* ------------------------------------------------------------------ zoom and compare */

  /* One <dialog> for the page, built here (the task partial is swapped; the viewer outlives it). Zoom shows
   * one image as large as the window allows (arrows or a number change image, + and − magnify); compare
   * shows two side by side. Both read the original file, so an expert sees every pixel a model drew; an
   * image shown larger than its natural size keeps hard pixel edges. */
  const viewer = { dialog: null, mode: null, labels: [], scale: 1, compareNext: 0, returnLabel: null };

  function candImage(label) {
    const form = document.querySelector("form.ranker");
    return form ? form.querySelector('.cand[data-label="' + label + '"] img') : null;
  }

  function candCount() {
    const form = document.querySelector("form.ranker");
    return form ? form.querySelectorAll(".cand").length : 0;
  }

  function buildViewer() {
    if (viewer.dialog) return viewer.dialog;
    const dialog = document.createElement("dialog");
    dialog.className = "viewer";
    dialog.setAttribute("aria-labelledby", "viewer-title");
    dialog.innerHTML =
      '<header class="viewer-bar"><h2 id="viewer-title" tabindex="-1"></h2>' +
      '<p class="viewer-help"></p>' +
      '<button type="button" class="viewer-close">Close <kbd>Esc</kbd></button></header>' +
      '<div class="viewer-panes"></div>';
    dialog.querySelector(".viewer-close").addEventListener("click", closeViewer);
    dialog.addEventListener("close", function () { afterClose(); });
    document.body.appendChild(dialog);
    viewer.dialog = dialog;
    return dialog;
  }

  function pane(label, side) {
    const source = candImage(label);
    const figure = document.createElement("figure");
    figure.className = "viewer-pane";
    figure.dataset.label = String(label);
    const caption = document.createElement("figcaption");
    const n = candCount();
    if (side) {
      const sel = document.createElement("select");
      sel.setAttribute("aria-label", side + " image");
      for (let i = 1; i <= n; i++) {
        const opt = document.createElement("option");
        opt.value = String(i);
        opt.textContent = "Image " + i;
        if (i === label) opt.selected = true;
        sel.appendChild(opt);
      }
      sel.addEventListener("change", function () {
        const labels = viewer.labels.slice();
        labels[side === "Left" ? 0 : 1] = parseInt(sel.value, 10);
        showViewer("compare", labels, { keepFocus: sel });
      });
      caption.appendChild(sel);
    } else {
      const strong = document.createElement("strong");
      strong.textContent = "Image " + label;
      caption.appendChild(strong);
    }
    const size = document.createElement("span");
    size.className = "viewer-size";
    if (source) size.textContent = source.dataset.fullWidth + " × " + source.dataset.fullHeight + " px";
    caption.appendChild(size);
    const frame = document.createElement("div");
    frame.className = "viewer-frame";
    const img = document.createElement("img");
    img.alt = "Image " + label + (source ? " (" + source.alt + ")" : "");
    img.draggable = false;
    img.addEventListener("load", function () { fitPane(figure); });
    img.src = source ? source.dataset.full || source.currentSrc || source.src : "";
    frame.appendChild(img);
    figure.appendChild(caption);
    figure.appendChild(frame);
    return figure;
  }

  /* Size the image: fit the frame (aspect kept) times the magnification; pixelated when enlarged. */
  function fitPane(figure) {
    const frame = figure.querySelector(".viewer-frame");
    const img = frame.querySelector("img");
    const nw = img.naturalWidth, nh = img.naturalHeight;
    if (!nw || !nh) return;
    const fit = Math.min(frame.clientWidth / nw, frame.clientHeight / nh);
    const scale = fit * (viewer.mode === "zoom" ? viewer.scale : 1);
    img.style.width = Math.round(nw * scale) + "px";
    img.style.height = Math.round(nh * scale) + "px";
    img.classList.toggle("pixelated", scale > 1);
    frame.classList.toggle("magnified", viewer.mode === "zoom" && viewer.scale > 1);
  }

  function showViewer(mode, labels, opts) {
    const dialog = buildViewer();
    const n = candCount();
    if (!n) return;
    viewer.mode = mode;
    viewer.labels = labels.map(function (l) { return Math.min(Math.max(l, 1), n); });
    dialog.classList.toggle("compare", mode === "compare");
    const title = dialog.querySelector("#viewer-title");
    const help = dialog.querySelector(".viewer-help");
    if (mode === "zoom") {
      title.textContent = "Image " + viewer.labels[0] + " of " + n + (viewer.scale > 1 ? " · ×" + viewer.scale : "");
      help.innerHTML = "<kbd>←</kbd> <kbd>→</kbd> or a number: another image · <kbd>+</kbd> <kbd>−</kbd> magnify · <kbd>C</kbd> compare with the next";
    } else {
      title.textContent = "Image " + viewer.labels[0] + " and image " + viewer.labels[1];
      help.innerHTML = "Two numbers choose another pair · <kbd>Z</kbd> zoom the left one";
    }
    const panes = dialog.querySelector(".viewer-panes");
    panes.textContent = "";
    if (mode === "zoom") panes.appendChild(pane(viewer.labels[0]));
    else {
      panes.appendChild(pane(viewer.labels[0], "Left"));
      panes.appendChild(pane(viewer.labels[1], "Right"));
    }
    if (!dialog.open) dialog.showModal();
    panes.querySelectorAll(".viewer-pane").forEach(fitPane);
    if (opts && opts.keepFocus) {
      const again = panes.querySelector('select[aria-label="' + opts.keepFocus.getAttribute("aria-label") + '"]');
      if (again) again.focus();
    } else {
      title.focus();
    }
  }

  function closeViewer() {
    if (viewer.dialog && viewer.dialog.open) viewer.dialog.close();
  }

  function afterClose() {
    if (viewer.dialog.open) return; // reopened before the (asynchronous) close event arrived
    const label = viewer.mode === "zoom" ? viewer.labels[0] : viewer.returnLabel;
    viewer.mode = null;
    viewer.scale = 1;
    // Back to the card the viewer was opened from (or last showed), so the keyboard user keeps their place.
    const form = document.querySelector("form.ranker");
    const pick = form && label ? form.querySelector('.cand[data-label="' + label + '"] .cand-pick') : null;
    if (pick) pick.focus();
  }

  function openZoom(label) {
    viewer.scale = 1;
    viewer.returnLabel = label;
    showViewer("zoom", [label]);
  }

  function openCompare(a, b) {
    viewer.compareNext = 0;
    viewer.returnLabel = a;
    showViewer("compare", [a, b]);
  }

  function focusedLabel() {
    const el = document.activeElement;
    const card = el && el.closest ? el.closest(".cand") : null;
    return card ? parseInt(card.dataset.label, 10) : 1;
  }

  /* Keys while the viewer is open; returns true when the key was the viewer's. */
  function viewerKey(e) {
    if (!viewer.dialog || !viewer.dialog.open) return false;
    const key = e.key;
    const n = candCount();
    if (key === "Escape" || (key === "z" || key === "Z") && viewer.mode === "zoom" ||
        (key === "c" || key === "C") && viewer.mode === "compare" && !typing(e.target)) {
      e.preventDefault();
      closeViewer();
      return true;
    }
    if (typing(e.target)) return false; // the compare selects keep their own keys
    if (viewer.mode === "zoom") {
      const at = viewer.labels[0];
      if (key === "ArrowRight" || key === "ArrowLeft") {
        e.preventDefault();
        showViewer("zoom", [((at - 1 + (key === "ArrowRight" ? 1 : n - 1)) % n) + 1]);
      } else if (/^[1-9]$/.test(key)) {
        e.preventDefault();
        showViewer("zoom", [parseInt(key, 10)]);
      } else if (key === "+" || key === "=") {
        e.preventDefault();
        viewer.scale = Math.min(viewer.scale * 2, 8);
        showViewer("zoom", [at]);
      } else if (key === "-" || key === "_") {
        e.preventDefault();
        viewer.scale = Math.max(viewer.scale / 2, 1);
        showViewer("zoom", [at]);
      } else if (key === "0") {
        e.preventDefault();
        viewer.scale = 1;
        showViewer("zoom", [at]);
      } else if (key === "c" || key === "C") {
        e.preventDefault();
        openCompare(at, (at % n) + 1);
      }
      return true;
    }
    if (/^[1-9]$/.test(key)) {
      e.preventDefault();
      const labels = viewer.labels.slice();
      labels[viewer.compareNext] = parseInt(key, 10);
      viewer.compareNext = 1 - viewer.compareNext;
      showViewer("compare", labels);
    } else if (key === "z" || key === "Z") {
      e.preventDefault();
      openZoom(viewer.labels[0]); // the dialog stays open: a close() here would fire "close" after this
    }
    return true;
  }

  document.addEventListener("click", function (e) {
    const button = e.target.closest && e.target.closest("[data-zoom]");
    if (button) {
      e.preventDefault();
      openZoom(parseInt(button.dataset.zoom, 10));
    }
  });
  window.addEventListener("resize", function () {
    if (viewer.dialog && viewer.dialog.open) viewer.dialog.querySelectorAll(".viewer-pane").forEach(fitPane);
  });

  let compareArmed = null; // after C: null, then [] waiting for the first number, then [a]

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (viewerKey(e)) return;
    if (compareArmed !== null && !typing(e.target)) {
      const ranker = activeRanker();
      if (/^[1-9]$/.test(e.key) && ranker && parseInt(e.key, 10) <= ranker.n) {
        e.preventDefault();
        compareArmed.push(parseInt(e.key, 10));
        if (compareArmed.length === 2) {
          const pair = compareArmed;
          compareArmed = null;
          ranker.announce("");
          openCompare(pair[0], pair[1]);
        } else {
          ranker.announce("Compare image " + compareArmed[0] + " with… press another number.");
        }
        return;
      }
      compareArmed = null;
      if (ranker) ranker.announce("Compare cancelled.");
      if (e.key === "Escape") {
        e.preventDefault();
        return;
      }
    }
    if (e.key === "Escape") {
      if (closePanels()) {
        e.preventDefault();
        const title = document.getElementById("task-title");
        if (title) title.focus();
      }
      return;
    }
    if (typing(e.target)) return;
    const ranker = activeRanker();
    if (!ranker) return;
    const key = e.key;
    if (/^[1-9]$/.test(key)) {
      e.preventDefault();
      ranker.place(parseInt(key, 10));
    } else if (key === "=" && ranker.allowTies) {
      e.preventDefault();
      ranker.tieArmed = ranker.groups.length > 0;
      ranker.announce(ranker.tieArmed ? "Tie: press the number of the image tied with the last place." : "Place an image first.");
    } else if (key === "Backspace") {
      e.preventDefault();
      ranker.undo();
    } else if (key === "Enter") {
      // Links and other buttons keep their own Enter; image cards and the page submit the ranking.
      const t = e.target;
      const own = t && t.closest && (t.closest("a, summary") || (t.closest("button") && !t.closest(".cand-pick")));
      if (own) return;
      e.preventDefault();
      ranker.submit();
    } else if (key === "s" || key === "S") {
      const skip = document.querySelector("form.skip-form");
      if (skip) {
        e.preventDefault();
        skip.requestSubmit ? skip.requestSubmit() : skip.submit();
      }
    } else if (key === "u" || key === "U") {
      const undo = document.querySelector("form.undo-skip");
      if (undo) {
        e.preventDefault();
        undo.requestSubmit ? undo.requestSubmit() : undo.submit();
      }
    } else if (key === "z" || key === "Z") {
      e.preventDefault();
      openZoom(focusedLabel());
    } else if (key === "c" || key === "C") {
      e.preventDefault();
      compareArmed = [];
      ranker.announce("Compare: press the numbers of two images.");
    } else if (key === "f" || key === "F") {
      e.preventDefault();
      openPanel("flag");
    } else if (PANEL_KEYS[key]) {
      e.preventDefault();
      openPanel(PANEL_KEYS[key]);
    }
  });

  function prefetch(root) {
    root.querySelectorAll("[data-prefetch] [data-url]").forEach(function (link) {
      const img = new Image();
      img.decoding = "async";
      img.src = link.dataset.url;
      prefetched.push(img);
      if (prefetched.length > 32) prefetched.shift();
    });
  }

  /* The skip's undo lasts a few seconds (the server decides; this only shows the time left and then
   * takes the button away so nobody presses it in vain). */
  function undoCountdown(root) {
    const form = root.querySelector("form.undo-skip");
    if (!form || form._ticking) return;
    form._ticking = true;
    const until = parseInt(form.dataset.until, 10);
    const left = form.querySelector(".undo-left");
    function tick() {
      const s = Math.ceil((until - Date.now()) / 1000);
      if (!document.body.contains(form)) return;
      if (s <= 0) {
        form.remove();
        return;
      }
      if (left) left.textContent = s + " s";
      setTimeout(tick, 250);
    }
    tick();
  }

  function init(root) {
    undoCountdown(root || document);
    (root || document).querySelectorAll("form.ranker").forEach(function (form) {
      if (!form._ranker) form._ranker = new Ranker(form);
    });
    prefetch(root || document);
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); });

  // htmx swaps a new task in after each submit: wire it, and move focus to its prompt so the keyboard
  // user (and a screen reader) lands on the new task. This runs on afterSwap, in the same task as the
  // swap itself: afterSettle comes a settle delay later (a timer, longer on a busy machine), and in that
  // gap the new task was on screen with focus on <body> and no ranker wired, so keys pressed then were lost.
  document.addEventListener("htmx:afterSwap", function (e) {
    const task = document.getElementById("task");
    if (!task || task._wired) return; // afterSwap fires once per swapped element
    task._wired = true;
    init(task);
    const title = document.getElementById("task-title");
    if (title && task.contains(title)) title.focus({ preventScroll: false });
  });

  // A refused submission comes back as 4xx with the task and the reason; show it in place.
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (SWAP_ON_ERROR.indexOf(e.detail.xhr.status) >= 0) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });
})();
