// The review list: filter, sort and page the listed samples, record a decision per card, save the
// decisions as a file. Everything comes from the JSON blob in #fercure-data; dataset strings are
// only ever set as textContent or attribute values, never parsed as HTML.
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('fercure-data').textContent);
  var R = D.rows, L = D.labels, K = D.classes.length;
  var BIT = {};
  D.flags.forEach(function (f, i) { BIT[f] = 1 << i; });
  var QUALITY = 0;
  D.quality_flags.forEach(function (f) { QUALITY |= BIT[f]; });
  var FLAG_TEXT = D.flag_text;
  var ACTION_TEXT = {keep: 'keep', relabel: 'relabel', drop: 'drop', review: 'leave for review'};

  var rows = R.id.map(function (id, i) {
    return {i: i, id: id, path: R.path[i], given: R.given[i], sugg: R.sugg[i], offer: R.offer ? R.offer[i] : 1,
            conf: R.conf[i], band: D.bands[R.band[i]], score: R.score[i], flags: R.flags[i], status: R.status[i],
            reason: R.reason[i], action: R.action[i], thumb: R.thumb[i], votes: R.votes ? R.votes[i] : '', h: hash(id),
            hash: R.hash ? R.hash[i] : ''};
  });
  // A fixed pseudo-random number per sample (FNV-1a of its id): the spot checks are listed in this
  // order, not flagged-first, so the order says nothing about what the model thinks of them.
  function hash(s) {
    var h = 2166136261;
    for (var k = 0; k < s.length; k++) { h ^= s.charCodeAt(k); h = Math.imul(h, 16777619) >>> 0; }
    return h;
  }
  var byId = {};
  rows.forEach(function (r) { byId[r.id] = r; });

  // --- group cards (fercure.groups): a group's first card holds its other members, side by side; one
  // decision there applies to each member still in it; a member taken out is a card of its own again
  var members = {};
  rows.forEach(function (r, i) {
    r.grp = R.grp ? R.grp[i] : -1;
    r.nn = R.nn ? R.nn[i] : [];
    if (r.grp >= 0 && r.grp !== r.i) { (members[r.grp] = members[r.grp] || []).push(r); }
  });

  var state = {cat: 'review', given: -1, sugg: -1, cell: null, status: -1, smin: null, smax: null, text: '',
               decided: 'any', sort: 'order', page: 0, size: 50, sel: null, similar: -1, blind: true};

  // A spot check shown blind hides what the model thinks (its suggestion, score, flags, reason), so a
  // decision on it measures the labels, not the reviewer's agreement with the model.
  function blindCard(r) { return state.blind && (r.flags & BIT.spot_check) !== 0 && !(r.flags & BIT.reviewed); }
  // "accept → class" only for a suggestion clearly above chance, never on a blind card
  function offered(r) { return r.sugg >= 0 && r.sugg !== r.given && !!r.offer && !blindCard(r); }

  // --- decisions, kept in localStorage so a reload does not lose them
  var KEY = 'fercure-decisions:' + D.key;
  var decisions = {};
  try { decisions = JSON.parse(localStorage.getItem(KEY) || '{}') || {}; } catch (e) { decisions = {}; }
  Object.keys(decisions).forEach(function (id) { if (!byId[id]) { delete decisions[id]; } });
  var takenOut = {};
  try { takenOut = JSON.parse(localStorage.getItem(KEY + ':taken-out') || '{}') || {}; } catch (e) { takenOut = {}; }
  function saveLocal() {
    try {
      localStorage.setItem(KEY, JSON.stringify(decisions));
      if (Object.keys(takenOut).length) { localStorage.setItem(KEY + ':taken-out', JSON.stringify(takenOut)); }
      else { localStorage.removeItem(KEY + ':taken-out'); }
    } catch (e) { /* private mode */ }
  }
  function inGroup(r) { return r.grp >= 0 && r.grp !== r.i && !takenOut[r.id]; }  // shown on its group's card
  function groupOf(r) {  // the members a group card's decision covers (its first card excluded)
    return r.grp === r.i ? (members[r.i] || []).filter(function (m) { return !takenOut[m.id]; }) : [];
  }
  function entry(r, action, label, group) {
    var e = {action: action, label: label || '', given: L[r.given], path: r.path};
    if (group) { e.via = 'group'; e.group = group; }
    return e;
  }
  // one decision: on a group card, for every member still in the group too
  function record(r, action, label) {
    var ms = groupOf(r);
    decisions[r.id] = entry(r, action, label, ms.length ? r.id : '');
    ms.forEach(function (m) { decisions[m.id] = entry(m, action, label, r.id); });
  }
  function forget(r) {
    delete decisions[r.id];
    groupOf(r).forEach(function (m) { if (decisions[m.id] && decisions[m.id].group === r.id) { delete decisions[m.id]; } });
  }
  function decide(r, action, label) {
    var d = decisions[r.id];
    if (d && d.action === action && (d.label || '') === (label || '')) { forget(r); }
    else { record(r, action, label); }
    saveLocal();
    render();
  }
  function takeOut(m) {  // the member leaves the group's decision; a decision of its own comes later
    takenOut[m.id] = true;
    if (decisions[m.id] && decisions[m.id].via === 'group') { delete decisions[m.id]; }
    saveLocal();
    render();
  }
  function putBack(m) {  // back under the group's decision (whatever the member had decided alone)
    delete takenOut[m.id];
    var d = decisions[rows[m.grp].id];
    if (d) { decisions[m.id] = entry(m, d.action, d.label, rows[m.grp].id); } else { delete decisions[m.id]; }
    saveLocal();
    render();
  }

  // The original file, when the report knows where the inputs live (file: URL, each part encoded).
  function originalUrl(r) {
    if (!D.input_root || !r.path) { return null; }
    var parts = (D.input_root.replace(/\/+$/, '') + '/' + r.path).split('/');
    return 'file://' + parts.map(function (p) { return encodeURIComponent(p); }).join('/');
  }

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) { Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); }); }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function fmt(x, d) { return x === null || x === undefined ? '–' : x.toFixed(d === undefined ? 2 : d); }

  // --- filtering and sorting
  function inCategory(r) {
    switch (state.cat) {
      case 'review': return (r.flags & (BIT.label_issue | BIT.ambiguous | (BIT.queue || 0))) !== 0 && !(r.flags & BIT.reviewed);
      case 'quality': return (r.flags & QUALITY) !== 0;
      case 'all': return true;
      default: return (r.flags & BIT[state.cat]) !== 0;
    }
  }
  function near(r) {  // a card (or a member on it) in the map selection / among the similar faces shown
    var ms = [r].concat(groupOf(r));
    if (state.sel && !ms.some(function (m) { return state.sel[m.i]; })) { return false; }
    if (state.similar >= 0) {
      var s = rows[state.similar];
      if (!ms.some(function (m) { return m.i === s.i || s.nn.some(function (n) { return n[2] === m.i; }); })) { return false; }
    }
    return true;
  }
  function matches(r) {
    if (inGroup(r)) { return false; }
    // a map selection or a card's similar faces show every listed card they hold, whatever the category
    if (state.sel || state.similar >= 0) { if (!near(r)) { return false; } }
    else if (!inCategory(r)) { return false; }
    if (state.given >= 0 && r.given !== state.given) { return false; }
    if (state.sugg >= 0 && r.sugg !== state.sugg) { return false; }
    if (state.cell) {
      // the matrix counts a sample under given → suggested; an unflagged sample's suggestion is its own label
      var s = r.sugg >= 0 ? r.sugg : r.given;
      if (r.score === null || r.given !== state.cell[0] || s !== state.cell[1]) { return false; }
    }
    if (state.status >= 0 && r.status !== state.status) { return false; }
    if (state.smin !== null && (r.score === null || r.score < state.smin)) { return false; }
    if (state.smax !== null && (r.score === null || r.score > state.smax)) { return false; }
    if (state.text && r.path.toLowerCase().indexOf(state.text) < 0 && r.id.indexOf(state.text) < 0) { return false; }
    if (state.decided === 'yes' && !decisions[r.id]) { return false; }
    if (state.decided === 'no' && decisions[r.id]) { return false; }
    return true;
  }
  function num(x, missing) { return x === null || x === undefined ? missing : x; }
  var SORTS = {
    order: function (a, b) { return a.i - b.i; },
    score_asc: function (a, b) { return num(a.score, 2) - num(b.score, 2) || a.i - b.i; },
    score_desc: function (a, b) { return num(b.score, -1) - num(a.score, -1) || a.i - b.i; },
    conf_desc: function (a, b) { return num(b.conf, -1) - num(a.conf, -1) || a.i - b.i; },
    conf_asc: function (a, b) { return num(a.conf, 2) - num(b.conf, 2) || a.i - b.i; },
    given: function (a, b) { return a.given - b.given || a.i - b.i; },
    path: function (a, b) { return a.path < b.path ? -1 : a.path > b.path ? 1 : a.i - b.i; },
    spot: function (a, b) { return a.h - b.h || a.i - b.i; }
  };
  function sorter() { return state.cat === 'spot_check' && state.sort === 'order' ? SORTS.spot : SORTS[state.sort]; }

  // A long reason is cut where a sentence or phrase ends, never inside one; "more" shows the rest.
  var SHORT = 110;
  function shortReason(t) {
    if (t.length <= SHORT) { return null; }
    var head = t.slice(0, SHORT + 1), groups = [['. ', '; '], [': ', ', ', ' (', ' — ']], cut = -1;
    for (var g = 0; g < groups.length && cut < 0; g++) {
      groups[g].forEach(function (sep) {
        var at = head.lastIndexOf(sep);
        if (at >= 30 && at + (sep === '. ' ? 1 : 0) > cut) { cut = at + (sep === '. ' ? 1 : 0); }
      });
    }
    if (cut < 0) { cut = head.lastIndexOf(' '); }
    if (cut < 1) { cut = SHORT; }
    return t.slice(0, cut).replace(/[\s,;:(—]+$/, '') + ' …';
  }

  // --- one card
  function bandText(r) {
    // the band's measured accuracy on held-out rows (the probe), when the audit calibrated it
    var b = D.bands.indexOf(r.band), acc = D.band_accuracy && D.band_accuracy[b];
    var seen = (acc === null || acc === undefined) ? '' : ' (held-out ones this sure: ' + Math.round(100 * acc) + ' % right)';
    if (r.band === 'guess') { return fmt(r.conf) + ': a guess' + seen; }
    if (r.band === 'lead') { return fmt(r.conf) + ': a lead, not evidence' + seen; }
    return fmt(r.conf) + ': likely' + seen;
  }
  function card(r) {
    var c = el('div', {'class': 'card', 'data-id': r.id, 'data-given': L[r.given],
                       'data-sugg': r.sugg >= 0 ? L[r.sugg] : '', 'data-score': r.score === null ? '' : String(r.score)});
    var d = decisions[r.id];
    if (d) { c.classList.add('decided'); }
    if (r.thumb) {
      var img = el('img', {alt: L[r.given] + ' sample', src: r.thumb, title: 'click: larger, with the original file',
                           'class': 'thumb'});
      img.addEventListener('click', function () { zoom(r); });
      c.appendChild(img);
    }
    else { c.appendChild(el('div', {'class': 'noimg', title: D.thumbs.note}, 'no thumbnail')); }
    var lab = el('div');
    lab.appendChild(el('span', {'class': 'lab given'}, L[r.given]));
    var differs = r.sugg >= 0 && r.sugg !== r.given, blind = blindCard(r);
    if (blind) {
      c.classList.add('blind');
      c.appendChild(lab);
      c.appendChild(el('div', {'class': 'conf blind-note'},
                       'spot check, shown blind: is the label right? (the model\'s view is hidden)'));
    } else if (offered(r)) {
      lab.appendChild(document.createTextNode(' → '));
      lab.appendChild(el('span', {'class': 'lab b-' + r.band}, L[r.sugg]));
      c.appendChild(lab);
      c.appendChild(el('div', {'class': 'conf b-' + r.band}, bandText(r)));
    } else if (differs) {
      c.appendChild(lab);
      c.appendChild(el('div', {'class': 'conf b-guess no-sugg'}, 'no suggestion: the model\'s best other class is at ' +
                       fmt(r.conf) + ', barely above chance (' + fmt(D.chance) + ')'));
    } else {
      c.appendChild(lab);
      if (r.conf !== null) { c.appendChild(el('div', {'class': 'conf b-guess'}, 'no other label suggested')); }
    }
    if (!blind) { c.appendChild(el('div', null, 'label score ' + fmt(r.score, 3))); }
    if (r.votes) { c.appendChild(el('div', {'class': 'votes', title: 'the annotators\' votes'}, 'votes: ' + r.votes)); }
    var fl = el('div', {'class': 'flags'});
    D.flags.forEach(function (f) {
      if (!(r.flags & BIT[f]) || (blind && f !== 'spot_check' && f !== 'face')) { return; }
      fl.appendChild(el('span', {'class': 'chip'}, f === 'face' ? D.statuses[r.status] : FLAG_TEXT[f]));
    });
    c.appendChild(fl);
    if (r.action && !blind) { c.appendChild(el('div', {'class': 'act'}, 'fercure (default policy): ' + ACTION_TEXT[r.action])); }
    var url = originalUrl(r);
    if (url) {
      c.appendChild(el('a', {'class': 'path', href: url, title: 'open the original file', target: '_blank', rel: 'noopener'}, r.path));
    } else { c.appendChild(el('div', {'class': 'path', title: r.path}, r.path)); }
    if (r.reason && !blind) {
      var short = shortReason(r.reason);
      var rs = el('div', {'class': 'reason', title: r.reason}, short || r.reason);
      c.appendChild(rs);
      if (short) {  // a button shows the rest
        var more = el('button', {type: 'button', 'class': 'link more', 'aria-expanded': 'false'}, 'more');
        more.addEventListener('click', function () {
          var open = rs.classList.toggle('open');
          rs.textContent = open ? r.reason : short;
          more.textContent = open ? 'less' : 'more';
          more.setAttribute('aria-expanded', String(open));
        });
        c.appendChild(more);
      }
    }
    var ms = groupOf(r);
    if (ms.length) { c.classList.add('group-card'); c.appendChild(groupBox(r, ms)); }
    else if (r.grp >= 0 && r.grp !== r.i) {
      var back = el('div', {'class': 'muted taken-out'}, 'taken out of the group of ' + rows[r.grp].path + ' ');
      var pb = el('button', {type: 'button', 'class': 'link put-back'}, 'put back');
      pb.addEventListener('click', function () { putBack(r); });
      back.appendChild(pb);
      c.appendChild(back);
    }
    var sim = blind ? null : similarBox(r);  // the neighbours' labels are the model's view too
    if (sim) { c.appendChild(sim); }
    c.appendChild(controls(r, d, offered(r)));
    return c;
  }
  function groupBox(r, ms) {
    var box = el('div', {'class': 'grp'});
    box.appendChild(el('div', {'class': 'muted'}, 'Group card: ' + (ms.length + 1) + ' look-alikes flagged with the ' +
      'same label. One decision applies to each; take one out to decide it alone.'));
    var strip = el('div', {'class': 'members'});
    ms.forEach(function (m) {
      var mc = el('div', {'class': 'member', 'data-id': m.id, title: m.path});
      if (m.thumb) { mc.appendChild(el('img', {src: m.thumb, alt: L[m.given] + ' sample', 'class': 'mthumb'})); }
      else { mc.appendChild(el('div', {'class': 'mthumb noimg'}, '–')); }
      mc.appendChild(el('div', null, L[m.given] + (m.sugg >= 0 && m.sugg !== m.given ? ' → ' + L[m.sugg] : '')));
      mc.appendChild(el('div', {'class': 'muted'}, 'score ' + fmt(m.score, 3)));
      var b = el('button', {type: 'button', 'class': 'link take-out'}, 'take out');
      b.addEventListener('click', function () { takeOut(m); });
      mc.appendChild(b);
      strip.appendChild(mc);
    });
    box.appendChild(strip);
    return box;
  }
  // its nearest neighbours in the run's embedding, with their labels: a cluster to fix with the bulk actions
  function similarBox(r) {
    if (!r.nn || !r.nn.length) { return null; }
    var box = el('div', {'class': 'similar'}, 'similar faces: ');
    r.nn.forEach(function (n) {
      var other = n[2] >= 0 ? rows[n[2]] : null, lab = n[0] >= 0 ? L[n[0]] : '?';
      var item = el('span', {'class': 'nn' + (n[0] !== r.given ? ' differs' : ''),
                             title: 'cosine similarity ' + n[1] + (other ? '' : ' (not listed)')});
      if (other && other.thumb) { item.appendChild(el('img', {src: other.thumb, alt: lab + ' sample', 'class': 'nthumb'})); }
      item.appendChild(document.createTextNode(lab + ' ' + Math.round(100 * n[1]) + '%'));
      box.appendChild(item);
    });
    if (r.nn.some(function (n) { return n[2] >= 0; })) {
      var b = el('button', {type: 'button', 'class': 'link show-similar'}, 'list them');
      b.addEventListener('click', function () { state.similar = r.i; state.page = 0; render(); });
      box.appendChild(b);
    }
    return box;
  }
  function controls(r, d, differs) {
    var box = el('div', {'class': 'decide'});
    function btn(cls, text, action, label, on) {
      var b = el('button', {type: 'button', 'class': cls + (on ? ' on' : '')}, text);
      b.addEventListener('click', function () { decide(r, action, label); });
      box.appendChild(b);
    }
    if (differs) {
      btn('accept', 'accept → ' + L[r.sugg], 'relabel', L[r.sugg], d && d.action === 'relabel' && d.label === L[r.sugg]);
    }
    btn('keep', 'keep', 'keep', '', d && d.action === 'keep');
    btn('drop', 'drop', 'drop', '', d && d.action === 'drop');
    var sel = el('select', {'class': 'other', 'aria-label': 'relabel to another class'});
    sel.appendChild(el('option', {value: ''}, 'other class…'));
    D.classes.forEach(function (name) {
      if (name === L[r.given]) { return; }
      var o = el('option', {value: name}, name);
      if (d && d.action === 'relabel' && d.label === name) { o.selected = true; }
      sel.appendChild(o);
    });
    sel.addEventListener('change', function () { if (sel.value) { decide(r, 'relabel', sel.value); } });
    box.appendChild(sel);
    return box;
  }

  // --- the list, the pager, the chips and the decision bar
  var shownRows = [], cur = -1;
  function render() {
    var shown = shownRows = rows.filter(matches).sort(sorter());
    var pages = Math.max(1, Math.ceil(shown.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    var lo = state.page * state.size, hi = Math.min(shown.length, lo + state.size);
    var list = $('list');
    list.textContent = '';
    var frag = document.createDocumentFragment();
    for (var i = lo; i < hi; i++) { frag.appendChild(card(shown[i])); }
    $('nshown').textContent = String(shown.length);
    var old = shown.filter(function (r) { return r.flags & BIT.reviewed; }).length;
    $('bulk-skip').textContent = old ? ' (' + old + ' of them reviewed in an earlier round: bulk actions leave those ' +
      'as they were decided)' : '';
    ['bulk-accept', 'bulk-keep', 'bulk-drop', 'bulk-undo'].forEach(function (b) { $(b).disabled = !shown.length; });
    list.appendChild(frag);
    if (!shown.length) { list.appendChild(el('p', {'class': 'muted'}, 'No listed sample matches these filters.')); }
    $('count').textContent = shown.length ? 'Showing ' + (lo + 1) + '–' + hi + ' of ' + shown.length +
      ' (' + rows.length + ' listed)' : 'Showing 0 of 0 (' + rows.length + ' listed)';
    $('page').textContent = 'page ' + (state.page + 1) + ' of ' + pages;
    $('prev').disabled = state.page === 0;
    $('next').disabled = state.page >= pages - 1;
    var chips = $('chips');
    chips.textContent = '';
    if (state.cell) { chip('cell: ' + L[state.cell[0]] + ' → ' + L[state.cell[1]], function () { state.cell = null; }); }
    if (state.status >= 0) { chip('face status: ' + D.statuses[state.status], function () { state.status = -1; }); }
    if (state.sel) { chip('map selection: ' + state.selN + (state.selN === 1 ? ' point' : ' points'), function () { state.sel = null; selectOnMap(); }); }
    if (state.similar >= 0) { chip('similar to ' + rows[state.similar].path, function () { state.similar = -1; }); }
    Array.prototype.forEach.call(document.querySelectorAll('td.cell'), function (td) {
      td.classList.toggle('sel', !!state.cell && +td.dataset.g === state.cell[0] && +td.dataset.s === state.cell[1]);
    });
    var n = Object.keys(decisions).length;
    $('ndec').textContent = n + (n === 1 ? ' decision' : ' decisions');
    $('dl-csv').disabled = $('dl-json').disabled = $('clear').disabled = n === 0;
    renderGroups();
    setCurrent(Math.min(cur, hi - lo - 1), false);
    pad();
  }
  // The fixed decisions bar must never cover the end of the page (a chip's ×, the last cards),
  // however many lines it wraps to.
  function pad() {
    var h = $('bar').offsetHeight + 16;
    document.body.style.paddingBottom = h + 'px';
    document.documentElement.style.scrollPaddingBottom = h + 'px';  // scrolling into view stops above it
  }
  window.addEventListener('resize', pad);
  function chip(text, clear) {
    var c = el('span', {'class': 'chip'}, text + ' ');
    var x = el('button', {type: 'button', 'class': 'link', 'aria-label': 'clear ' + text}, '×');
    x.addEventListener('click', function () { clear(); state.page = 0; render(); });
    c.appendChild(x);
    $('chips').appendChild(c);
  }
  function renderGroups() {
    var box = $('groups');
    box.textContent = '';
    if (!D.dup_groups.length) { box.appendChild(el('p', {'class': 'muted'}, 'None.')); return; }
    D.dup_groups.forEach(function (g) {
      var div = el('div', {'class': 'group'});
      g.forEach(function (i) { div.appendChild(card(rows[i])); });
      box.appendChild(div);
    });
  }

  // --- saving decisions: a download made in the page, no server
  // A leading = + - @ tab or CR would run as a spreadsheet formula: prefix ' (read back by fercure.decisions).
  function csvCell(s) { s = String(s); if (/^[=+\-@\t\r]/.test(s)) s = "'" + s; return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function decisionList() {
    return Object.keys(decisions).sort().map(function (id) {
      var d = decisions[id];
      return {sample_id: id, action: d.action, label: d.label, given_label: d.given,
              source_path: d.path !== undefined ? d.path : (byId[id] ? byId[id].path : ''),
              decided_via: d.via || 'card', group_id: d.group || '',
              content_hash: byId[id] ? byId[id].hash || '' : '', run_id: D.run_id || ''};
    });
  }
  function download(name, type, text) {
    var a = el('a', {download: name});
    a.href = URL.createObjectURL(new Blob([text], {type: type}));
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
  }
  var stem = D.stem || 'decisions-report';
  $('dl-csv').addEventListener('click', function () {
    var lines = ['sample_id,action,label,given_label,source_path,decided_via,group_id,content_hash,run_id'];
    decisionList().forEach(function (d) {
      lines.push([d.sample_id, d.action, d.label, d.given_label, d.source_path, d.decided_via, d.group_id, d.content_hash,
        d.run_id]
        .map(csvCell).join(','));
    });
    download(stem + '.csv', 'text/csv', lines.join('\n') + '\n');
  });
  $('dl-json').addEventListener('click', function () {
    download(stem + '.json', 'application/json', JSON.stringify({run_id: D.run_id, decisions: decisionList()}, null, 1));
  });
  $('clear').addEventListener('click', function () {
    if (window.confirm('Forget all ' + Object.keys(decisions).length + ' decisions recorded in this browser?')) {
      decisions = {}; saveLocal(); render();
    }
  });

  // --- controls
  function fillSelect(sel, names) {
    names.forEach(function (name, i) { sel.appendChild(el('option', {value: String(i)}, name)); });
  }
  fillSelect($('f-given'), L);
  fillSelect($('f-sugg'), L);
  fillSelect($('f-status'), D.statuses);
  function bind(id, key, parse) {
    // typed fields apply as they are typed, not only when the field is left
    var typed = $(id).tagName === 'INPUT';
    (typed ? ['input', 'change'] : ['change']).forEach(function (kind) {
      $(id).addEventListener(kind, function (ev) {
        var v = parse(ev.target.value);
        if (typed && state[key] === v) { return; }
        state[key] = v;
        state.page = 0;
        render();
      });
    });
  }
  function intOr(v) { return v === '' ? -1 : parseInt(v, 10); }
  function floatOr(v) { return v === '' || isNaN(parseFloat(v)) ? null : parseFloat(v); }
  bind('f-cat', 'cat', String);
  bind('f-given', 'given', intOr);
  bind('f-sugg', 'sugg', intOr);
  bind('f-status', 'status', intOr);
  bind('f-smin', 'smin', floatOr);
  bind('f-smax', 'smax', floatOr);
  bind('f-text', 'text', function (v) { return v.trim().toLowerCase(); });
  bind('f-decided', 'decided', String);
  bind('f-sort', 'sort', String);
  bind('f-size', 'size', function (v) { return parseInt(v, 10); });
  $('f-blind').addEventListener('change', function (ev) { state.blind = ev.target.checked; render(); });
  $('prev').addEventListener('click', function () { state.page -= 1; render(); });
  $('next').addEventListener('click', function () { state.page += 1; render(); });

  // Links elsewhere in the page narrow the list: a matrix cell, a face status, an issue kind.
  function show(patch) {
    ['given', 'sugg', 'status'].forEach(function (k) { state[k] = -1; $('f-' + k).value = ''; });
    state.cell = null;
    state.sel = null;
    state.similar = -1;
    selectOnMap();
    Object.keys(patch).forEach(function (k) { state[k] = patch[k]; });
    $('f-cat').value = state.cat;
    $('f-status').value = state.status >= 0 ? String(state.status) : '';
    state.page = 0;
    render();
    $('review').scrollIntoView();
  }
  Array.prototype.forEach.call(document.querySelectorAll('td.cell'), function (td) {
    td.addEventListener('click', function () { show({cat: 'all', cell: [+td.dataset.g, +td.dataset.s]}); });
  });
  Array.prototype.forEach.call(document.querySelectorAll('[data-show-status]'), function (b) {
    b.addEventListener('click', function () { show({cat: 'all', status: D.statuses.indexOf(b.dataset.showStatus)}); });
  });
  Array.prototype.forEach.call(document.querySelectorAll('[data-show-flag]'), function (b) {
    b.addEventListener('click', function () { show({cat: b.dataset.showFlag}); });
  });

  // --- a decision for every card the filters show (all pages). Cards reviewed in an earlier round
  // (train --trusted) are never touched: a bulk decision fed to the next run would silently revert
  // them; nor are cards already decided here (undo aside), nor, for accept, cards that offer nothing.
  function bulk(action) {
    var skip = {reviewed: 0, decided: 0, nothing: 0};
    var targets = shownRows.filter(function (r) {
      if (action === 'undo') { return !!decisions[r.id]; }
      if (r.flags & BIT.reviewed) { skip.reviewed += 1; return false; }
      if (decisions[r.id]) { skip.decided += 1; return false; }
      if (action === 'accept' && !offered(r)) { skip.nothing += 1; return false; }
      return true;
    });
    var what = {accept: 'accept the suggestion of', keep: 'keep', drop: 'drop', undo: 'undo the decisions of'}[action];
    var notes = [];
    if (skip.reviewed) { notes.push(skip.reviewed + ' reviewed in an earlier round'); }
    if (skip.decided) { notes.push(skip.decided + ' already decided here'); }
    if (skip.nothing) { notes.push(skip.nothing + ' with no suggestion to accept (none offered, or shown blind)'); }
    var left = notes.length ? 'left as they are: ' + notes.join('; ') : '';
    $('bulk-note').textContent = targets.length ? '' : 'No card to ' + what + (left ? ' (' + left + ').' : '.');
    if (!targets.length || !window.confirm(what.charAt(0).toUpperCase() + what.slice(1) + ' ' + targets.length +
                                           (targets.length === 1 ? ' card?' : ' cards?') +
                                           (left ? ' (' + left + '.)' : ''))) { return; }
    targets.forEach(function (r) {
      if (action === 'undo') { forget(r); return; }
      record(r, action === 'accept' ? 'relabel' : action, action === 'accept' ? L[r.sugg] : '');
    });
    saveLocal();
    render();
  }
  ['accept', 'keep', 'drop', 'undo'].forEach(function (a) { $('bulk-' + a).addEventListener('click', function () { bulk(a); }); });

  // --- a larger view of a crop, beside the original file when the report knows where it is
  function zoom(r) {
    $('zoom-crop').src = r.thumb;
    var url = originalUrl(r);
    $('zoom-orig').hidden = !url;
    $('zoom-link').hidden = !url;
    if (url) { $('zoom-orig').src = url; $('zoom-link').href = url; } else { $('zoom-orig').removeAttribute('src'); }
    $('zoom-path').textContent = (D.input_root ? D.input_root.replace(/\/+$/, '') + '/' : '') + r.path;
    $('zoom').hidden = false;
  }
  function unzoom() { $('zoom').hidden = true; }
  $('zoom-close').addEventListener('click', unzoom);
  $('zoom').addEventListener('click', function (ev) { if (ev.target === $('zoom')) { unzoom(); } });

  // --- keyboard: j / k next / previous card, a accept, s keep, d drop, u undo, [ / ] page
  function pageCards() { return document.querySelectorAll('#list .card'); }
  function setCurrent(i, scroll) {
    var cs = pageCards();
    Array.prototype.forEach.call(cs, function (c) { c.classList.remove('cur'); });
    cur = cs.length ? Math.max(0, Math.min(i, cs.length - 1)) : -1;
    if (cur < 0 || i < 0) { if (i < 0) { cur = -1; } return; }
    cs[cur].classList.add('cur');
    if (scroll) { cs[cur].scrollIntoView({block: 'nearest'}); }
  }
  function currentRow() {
    var cs = pageCards();
    return cur >= 0 && cs[cur] ? byId[cs[cur].dataset.id] : null;
  }
  document.addEventListener('keydown', function (ev) {
    var t = ev.target, tag = t && t.tagName;
    if (ev.ctrlKey || ev.metaKey || ev.altKey || tag === 'INPUT' || tag === 'SELECT' || tag === 'TEXTAREA') { return; }
    if (ev.key === 'Escape') { unzoom(); return; }
    var r = currentRow(), pages = Math.max(1, Math.ceil(shownRows.length / state.size));
    var next = function () { setCurrent(cur + 1, true); };
    switch (ev.key) {
      case 'j': setCurrent(cur + 1, true); break;
      case 'k': setCurrent(Math.max(cur - 1, 0), true); break;
      case ']': if (state.page < pages - 1) { state.page += 1; cur = 0; render(); setCurrent(0, true); } break;
      case '[': if (state.page > 0) { state.page -= 1; cur = 0; render(); setCurrent(0, true); } break;
      case 'a': if (r && offered(r)) { setDecision(r, 'relabel', L[r.sugg]); next(); } break;
      case 's': if (r) { setDecision(r, 'keep', ''); next(); } break;
      case 'd': if (r) { setDecision(r, 'drop', ''); next(); } break;
      case 'u': if (r) { forget(r); saveLocal(); render(); } break;
      default: return;
    }
    ev.preventDefault();
  });
  // a key sets the decision (pressing it twice does not undo it, unlike a second click)
  function setDecision(r, action, label) {
    record(r, action, label);
    saveLocal();
    render();
  }

  // --- the embedding map: points coloured by given or suggested label, flagged ones ringed; drag a
  // rectangle (or click a point) to list the cards it holds
  var NS = 'http://www.w3.org/2000/svg', M = D.map, svg = $('map-svg');
  function hue(i) { return i < 0 ? '#bbb' : 'hsl(' + Math.round(360 * i / Math.max(L.length, 1)) + ',70%,45%)'; }
  function drawMap() {
    if (!M || !svg) { return; }
    var by = $('map-colour').value, frag = document.createDocumentFragment();
    svg.textContent = '';
    for (var p = 0; p < M.x.length; p++) {
      var c = document.createElementNS(NS, 'circle');
      c.setAttribute('cx', M.x[p]);
      c.setAttribute('cy', 1000 - M.y[p]);
      c.setAttribute('r', M.f[p] ? 9 : 5);
      c.setAttribute('fill', hue(by === 'sugg' && M.s[p] >= 0 ? M.s[p] : M.g[p]));
      if (M.f[p]) { c.setAttribute('stroke', '#000'); c.setAttribute('stroke-width', '2'); }
      c.setAttribute('data-p', String(p));
      frag.appendChild(c);
    }
    svg.appendChild(frag);
    var legend = $('map-legend');
    legend.textContent = '';
    L.forEach(function (name, i) {
      var s = el('span', {'class': 'key'}, name);
      s.style.borderLeft = '10px solid ' + hue(i);
      legend.appendChild(s);
    });
    selectOnMap();
  }
  function selectOnMap() {
    if (!svg) { return; }
    var n = 0;
    Array.prototype.forEach.call(svg.querySelectorAll('circle'), function (c) {
      var r = M.r[+c.getAttribute('data-p')], on = !!state.sel && r >= 0 && !!state.sel[r];
      c.classList.toggle('sel', on);
      n += on ? 1 : 0;
    });
    svg.setAttribute('data-selected', String(n));
  }
  if (M && svg) {
    var start = null, band = null;
    var at = function (ev) {
      var b = svg.getBoundingClientRect();
      // the viewBox pads the 0..1000 grid by 20 on each side, so points on the edge are drawn whole
      return [-20 + (ev.clientX - b.left) / b.width * 1040, -20 + (ev.clientY - b.top) / b.height * 1040];
    };
    svg.addEventListener('mousedown', function (ev) {
      start = at(ev);
      band = document.createElementNS(NS, 'rect');
      band.setAttribute('class', 'band');
      svg.appendChild(band);
      ev.preventDefault();
    });
    window.addEventListener('mousemove', function (ev) {
      if (!start) { return; }
      var q = at(ev);
      band.setAttribute('x', Math.min(start[0], q[0])); band.setAttribute('y', Math.min(start[1], q[1]));
      band.setAttribute('width', Math.abs(q[0] - start[0])); band.setAttribute('height', Math.abs(q[1] - start[1]));
    });
    window.addEventListener('mouseup', function (ev) {
      if (!start) { return; }
      var q = at(ev), x0 = Math.min(start[0], q[0]), x1 = Math.max(start[0], q[0]);
      var y0 = Math.min(start[1], q[1]), y1 = Math.max(start[1], q[1]), sel = {}, n = 0;
      if (x1 - x0 < 6 && y1 - y0 < 6) {  // a click: the nearest point within reach
        var best = -1, bd = 20 * 20;
        for (var p = 0; p < M.x.length; p++) {
          var dx = M.x[p] - q[0], dy = 1000 - M.y[p] - q[1];
          if (dx * dx + dy * dy < bd) { bd = dx * dx + dy * dy; best = p; }
        }
        if (best >= 0) { n = 1; if (M.r[best] >= 0) { sel[M.r[best]] = true; } }
      } else {
        for (var i = 0; i < M.x.length; i++) {
          var y = 1000 - M.y[i];
          if (M.x[i] >= x0 && M.x[i] <= x1 && y >= y0 && y <= y1) { n += 1; if (M.r[i] >= 0) { sel[M.r[i]] = true; } }
        }
      }
      band.remove();
      start = band = null;
      state.sel = n ? sel : null;
      state.selN = n;
      state.page = 0;
      selectOnMap();
      render();
    });
    $('map-colour').addEventListener('change', drawMap);
  }
  drawMap();
  render();
})();
