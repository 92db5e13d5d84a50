// The task page: drag ranking with ties, 1-5 scores, overlapping error spans with notes, edits, critique,
// keyboard shortcuts. Every piece of task text reaches the page through textContent, never innerHTML, so
// response text holding HTML is shown as text.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("task-data").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const dims = data.dimensions, kinds = data.span_kinds;
  const original = data.responses.map((r) => r.response_id);
  const letter = {};
  original.forEach((rid, i) => { letter[rid] = String.fromCharCode(65 + i); });
  const state = {
    tiers: original.map((rid) => [rid]),   // best first; a tier holds ties
    scores: {}, spans: [], edits: [], focus: 0, dim: dims[0], pending: {},
  };
  const cards = () => data.responses.map((r) => r.response_id).concat(state.edits.map((e) => e.new_response_id));

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- ranking ---------------------------------------------------------------------------------------------
  function moveTo(rid, tierIndex, asNewTier) {
    const tiers = state.tiers.map((t) => t.filter((x) => x !== rid));
    if (asNewTier) tiers.splice(tierIndex, 0, [rid]); else tiers[tierIndex].push(rid);
    state.tiers = tiers.filter((t) => t.length);
    renderTiers();
  }
  function tierOf(rid) { return state.tiers.findIndex((t) => t.includes(rid)); }

  function dropZone(node, onDrop) {
    node.addEventListener("dragover", (ev) => { ev.preventDefault(); node.classList.add("over"); });
    node.addEventListener("dragleave", () => node.classList.remove("over"));
    node.addEventListener("drop", (ev) => {
      ev.preventDefault(); node.classList.remove("over");
      const rid = ev.dataTransfer.getData("text/plain");
      if (original.includes(rid)) onDrop(rid);
    });
  }

  function renderTiers() {
    const box = document.getElementById("tiers");
    box.replaceChildren();
    state.tiers.forEach((tier, i) => {
      const gap = el("div", { class: "gap", "data-gap": String(i) });
      dropZone(gap, (rid) => moveTo(rid, i, true));
      box.appendChild(gap);
      const row = el("div", { class: "tier", "data-tier": String(i) });
      row.appendChild(el("span", { class: "rank" }, String(i + 1)));
      tier.forEach((rid) => {
        const chip = el("span", { class: "chip", draggable: true, "data-rid": rid }, "Response " + letter[rid]);
        chip.addEventListener("dragstart", (ev) => ev.dataTransfer.setData("text/plain", rid));
        row.appendChild(chip);
      });
      dropZone(row, (rid) => moveTo(rid, i, false));
      box.appendChild(row);
    });
    const last = el("div", { class: "gap", "data-gap": String(state.tiers.length) });
    dropZone(last, (rid) => moveTo(rid, state.tiers.length, true));
    box.appendChild(last);
  }

  // --- spans -----------------------------------------------------------------------------------------------
  function renderContent(rid, node, text) {
    // cut the text at every span boundary; each piece is marked as deep as the spans covering it (overlaps)
    const mine = state.spans.filter((s) => s.response_id === rid);
    const cuts = new Set([0, text.length]);
    mine.forEach((s) => { cuts.add(s.start); cuts.add(s.end); });
    const points = Array.from(cuts).sort((a, b) => a - b);
    node.replaceChildren();
    for (let i = 0; i + 1 < points.length; i++) {
      const [a, b] = [points[i], points[i + 1]];
      const over = mine.filter((s) => s.start <= a && s.end >= b);
      if (!over.length) { node.appendChild(document.createTextNode(text.slice(a, b))); continue; }
      const mark = el("mark", { class: "d" + Math.min(over.length, 3) + " " + over[0].kind }, text.slice(a, b));
      mark.title = over.map((s) => s.kind + ": " + s.note).join("\n");
      node.appendChild(mark);
    }
  }

  function selectionIn(node) {
    const sel = window.getSelection();
    if (!sel.rangeCount || sel.isCollapsed) return null;
    const range = sel.getRangeAt(0);
    if (!node.contains(range.startContainer) || !node.contains(range.endContainer)) return null;
    const before = document.createRange();
    before.selectNodeContents(node);
    before.setEnd(range.startContainer, range.startOffset);
    const start = before.toString().length;
    return { start: start, end: start + range.toString().length };
  }

  // --- cards -----------------------------------------------------------------------------------------------
  function textOf(rid) {
    const r = data.responses.find((x) => x.response_id === rid);
    return r ? r.content : state.edits.find((e) => e.new_response_id === rid).content;
  }

  function scoreRow(rid, dim) {
    const row = el("div", { class: "scores", "data-dim": dim });
    row.appendChild(el("span", { class: "dim" }, dim));
    for (let v = 1; v <= 5; v++) {
      const b = el("button", { type: "button", class: "score", "data-rid": rid, "data-dim": dim, "data-v": String(v) },
        String(v));
      if ((state.scores[rid] || {})[dim] === v) b.classList.add("on");
      b.addEventListener("click", () => setScore(rid, dim, v));
      row.appendChild(b);
    }
    return row;
  }

  function setScore(rid, dim, v) {
    state.scores[rid] = Object.assign(state.scores[rid] || {}, { [dim]: v });
    renderCards();
  }

  function card(rid, index) {
    const edit = state.edits.find((e) => e.new_response_id === rid);
    const r = data.responses.find((x) => x.response_id === rid);
    const box = el("article", { class: "resp" + (index === state.focus ? " focus" : ""), "data-rid": rid });
    const title = edit ? "Edited from Response " + letter[edit.response_id] : "Response " + letter[rid];
    box.appendChild(el("h3", {}, title + (r && r.model ? " · " + r.model : "")));
    const content = el("div", { class: "content", "data-rid": rid });
    renderContent(rid, content, textOf(rid));
    box.appendChild(content);
    dims.forEach((d) => box.appendChild(scoreRow(rid, d)));
    if (!edit) box.appendChild(spanTools(rid, content));
    if (!edit) box.appendChild(editTools(rid));
    const critique = r ? critiqueBox(r) : null;
    if (critique) box.appendChild(critique);
    box.addEventListener("click", () => { if (state.focus !== index) { state.focus = index; markFocus(); } });
    return box;
  }

  function spanTools(rid, content) {
    const wrap = el("div", { class: "spantools" });
    const list = el("ul", { class: "spans" });
    state.spans.forEach((s, i) => {
      if (s.response_id !== rid) return;
      const li = el("li", {}, s.kind + " \u201c" + textOf(rid).slice(s.start, s.end) + "\u201d: " + s.note);
      const x = el("button", { type: "button", class: "link" }, "remove");
      x.addEventListener("click", () => { state.spans.splice(i, 1); renderCards(); });
      li.appendChild(x);
      list.appendChild(li);
    });
    wrap.appendChild(list);
    const form = el("div", { class: "spanform hidden", "data-rid": rid });
    const kind = el("select", { class: "span-kind" });
    kinds.forEach((k) => kind.appendChild(el("option", { value: k }, k)));
    const note = el("input", { class: "span-note", placeholder: "what is wrong" });
    const add = el("button", { type: "button", class: "span-add" }, "Add span");
    form.append(kind, note, add);
    const mark = el("button", { type: "button", class: "mark" }, "Mark selected text (m)");
    mark.addEventListener("mousedown", (ev) => ev.preventDefault()); // keep the selection
    mark.addEventListener("click", () => openSpan(rid, content, form));
    add.addEventListener("click", () => {
      const sel = state.pending[rid];
      if (!sel) return;
      state.spans.push({ response_id: rid, start: sel.start, end: sel.end, kind: kind.value, note: note.value });
      delete state.pending[rid];
      renderCards();
    });
    wrap.append(mark, form);
    return wrap;
  }

  function openSpan(rid, content, form) {
    const sel = selectionIn(content);
    if (!sel) { say("Select some text of this response first."); return; }
    state.pending[rid] = sel;
    form.classList.remove("hidden");
    form.querySelector(".span-note").focus();
  }

  function editTools(rid) {
    const wrap = el("div", { class: "edittools" });
    const open = el("button", { type: "button", class: "edit" }, "Edit into a good answer (e)");
    const area = el("textarea", { class: "edit-text hidden", rows: 5 });
    const keep = el("button", { type: "button", class: "edit-keep hidden" }, "Keep as new response");
    open.addEventListener("click", () => {
      area.value = textOf(rid); area.classList.remove("hidden"); keep.classList.remove("hidden"); area.focus();
    });
    keep.addEventListener("click", () => {
      const id = rid + "-edit" + (state.edits.filter((e) => e.response_id === rid).length || "");
      state.edits.push({ response_id: rid, new_response_id: id, content: area.value });
      renderCards();
    });
    wrap.append(open, area, keep);
    return wrap;
  }

  function critiqueBox(r) {
    const box = el("div", { class: "critique" });
    if (r.critique) { box.appendChild(el("p", {}, "Critique: " + r.critique)); return box; }
    if (!data.critique_llm) return null;  // no critique and none to ask for: no box
    const b = el("button", { type: "button", class: "link" }, "Ask the LLM for a critique");
    b.addEventListener("click", async () => {
      const res = await fetch("/api/responses/" + r.id + "/critique", { method: "POST", headers: { "X-CSRF-Token": csrf } });
      const body = await res.json();
      if (res.ok) { r.critique = body.critique; renderCards(); } else say(body.detail);
    });
    box.appendChild(b);
    return box;
  }

  function renderCards() {
    const box = document.getElementById("responses");
    box.replaceChildren(...cards().map((rid, i) => card(rid, i)));
  }
  function markFocus() {
    document.querySelectorAll("article.resp").forEach((n, i) => n.classList.toggle("focus", i === state.focus));
  }
  function say(text) { document.getElementById("message").textContent = text; }

  // --- submit ----------------------------------------------------------------------------------------------
  async function submit() {
    const body = { ranking: state.tiers, scores: state.scores, spans: state.spans, edits: state.edits };
    const res = await fetch("/api/assignments/" + data.assignment_id + "/submit", {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body),
    });
    const answer = await res.json();
    if (res.ok) {
      document.getElementById("status").textContent = "submitted";
      document.getElementById("submit").disabled = true;
      document.getElementById("next-form").classList.remove("hidden");
      say("Submitted (#" + answer.submission_id + ").");
    } else say("Not submitted: " + answer.detail);
  }

  // --- keyboard --------------------------------------------------------------------------------------------
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey && ev.key === "Enter") { ev.preventDefault(); submit(); return; }
    if (["INPUT", "TEXTAREA", "SELECT"].includes(ev.target.tagName) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const ids = cards(), rid = ids[state.focus];
    const key = ev.key;
    if (key === "j") { state.focus = Math.min(state.focus + 1, ids.length - 1); markFocus(); }
    else if (key === "k") { state.focus = Math.max(state.focus - 1, 0); markFocus(); }
    else if (key === "h" || key === "f" || key === "s") { state.dim = { h: "helpfulness", f: "fluency", s: "safety" }[key]; say("scoring " + state.dim); }
    else if (key >= "1" && key <= "5") setScore(rid, state.dim, Number(key));
    else if (original.includes(rid) && (key === "u" || key === "d")) {
      const t = tierOf(rid), alone = state.tiers[t].length === 1;
      if (key === "u") moveTo(rid, alone ? Math.max(t - 1, 0) : t, true);
      else moveTo(rid, alone ? Math.min(t + 1, state.tiers.length - 1) + 1 : t + 1, true);
    } else if (original.includes(rid) && key === "t" && tierOf(rid) > 0) moveTo(rid, tierOf(rid) - 1, false);
    else if (key === "m" && original.includes(rid)) {
      const c = document.querySelector('article.resp[data-rid="' + CSS.escape(rid) + '"]');
      openSpan(rid, c.querySelector(".content"), c.querySelector(".spanform"));
      ev.preventDefault();
    } else if (key === "e" && original.includes(rid)) {
      document.querySelector('article.resp[data-rid="' + CSS.escape(rid) + '"] .edit').click(); ev.preventDefault();
    }
  });
  document.getElementById("submit").addEventListener("click", submit);
  renderTiers();
  renderCards();
  if (data.status !== "leased") { document.getElementById("submit").disabled = true; say("This task is " + data.status + "."); }
})();
