// The class server's pages: live updates over server-sent events, buttons that post to the
// server and show its answer, and a terminal per guest (xterm.js over a websocket).
'use strict';
const vxlab = (() => {
  function live(source) {
    const badge = document.getElementById('live');
    source.onopen = () => { badge.textContent = 'live'; badge.classList.remove('down'); };
    source.onerror = () => { badge.textContent = 'reconnecting'; badge.classList.add('down'); };
  }

  // "12 s ago" beside each time, kept current.
  function tick() {
    document.querySelectorAll('time[data-at]').forEach(t => {
      const s = Math.max(0, Math.round(Date.now() / 1000 - Number(t.dataset.at)));
      const ago = s < 120 ? s + ' s ago' : s < 7200 ? Math.floor(s / 60) + ' min ago' : Math.floor(s / 3600) + ' h ago';
      t.textContent = t.dataset.label + ' (' + ago + ')';
    });
  }

  async function post(url, button, result) {
    button.disabled = true;
    const label = button.textContent;
    button.textContent = label + '…';
    // The last answer goes at once: it is not this one's.
    result.textContent = label + '…';
    try {
      const r = await fetch(url, { method: 'POST' });
      result.innerHTML = r.ok ? await r.text()
        : r.status === 403 ? '<p class="error">403: this link no longer opens this lab (it was taken down, or brought up again with a new link)</p>'
        : '<p class="error">' + r.status + ' ' + r.statusText + '</p>';
    } catch (e) {
      result.textContent = 'the server did not answer: ' + e;
    } finally {
      button.disabled = false;
      button.textContent = label;
      // The answer goes where the button's user looks.
      result.scrollIntoView({ block: 'nearest' });
    }
  }

  function classPage(base) {
    // The grid's stream, opened again when the browser gives it up for good (an HTTP error
    // such as 429 ends an EventSource, which retries only lost connections): the
    // instructor's page must not stay stale while it says nothing.
    const connect = () => {
      const events = new EventSource(base + 'events');
      live(events);
      events.addEventListener('grid', e => {
        document.getElementById('grid-rows').innerHTML = JSON.parse(e.data).html;
        tick();
      });
      events.addEventListener('error', () => {
        if (events.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
      });
    };
    connect();
    document.addEventListener('click', e => {
      const b = e.target.closest('button[data-action]');
      if (!b) return;
      post(base + 'lab/' + encodeURIComponent(b.dataset.lab) + '/' + b.dataset.action + '?from=grid', b,
        document.getElementById('result'));
    });
    tick();
    setInterval(tick, 1000);
  }

  const terminals = {};

  // What was typed or pasted, in messages the server takes: a piece of at most 8192 UTF-16
  // units is at most 48 KiB of JSON even if every unit must be escaped, below the server's
  // 64 KiB; a piece never ends between the two halves of a surrogate pair.
  const PIECE = 8192;
  function sendInput(ws, data) {
    for (let i = 0; i < data.length;) {
      let end = Math.min(i + PIECE, data.length);
      const last = data.charCodeAt(end - 1);
      if (end < data.length && last >= 0xd800 && last <= 0xdbff) end -= 1;
      ws.send(JSON.stringify({ type: 'input', data: data.slice(i, end) }));
      i = end;
    }
  }

  function openTerminal(base, guest) {
    if (terminals[guest] && terminals[guest].open) return;
    // The one before, closed: its terminal and its window listener go.
    if (terminals[guest]) {
      window.removeEventListener('resize', terminals[guest].refit);
      terminals[guest].term.dispose();
    }
    const box = document.getElementById('term-' + guest);
    box.innerHTML = '';
    const term = new Terminal({ cols: 100, rows: 18, convertEol: false, fontSize: 13 });
    // As wide and as tall as its box, now and when the window changes.
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    const refit = () => fit.fit();
    window.addEventListener('resize', refit);
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    const ws = new WebSocket(scheme + location.host + base + 'term/' + encodeURIComponent(guest));
    ws.binaryType = 'arraybuffer';
    const state = { open: true, term, ws, refit };
    terminals[guest] = state;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
    ws.onmessage = e => term.write(typeof e.data === 'string' ? e.data : new Uint8Array(e.data));
    ws.onclose = () => { state.open = false; term.write('\r\n[terminal closed: press Terminal to open another]\r\n'); };
    term.onData(d => { if (ws.readyState === WebSocket.OPEN) sendInput(ws, d); });
    term.onResize(s => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols: s.cols, rows: s.rows })); });
  }

  function labPage(base, limit) {
    const events = new EventSource(base + 'events');
    live(events);
    // The lab went down or was made anew (with a new link): said once, and no reconnecting.
    const gone = () => {
      events.close();
      document.getElementById('gone').hidden = false;
      const h = document.getElementById('health');
      h.textContent = 'not running under this link';
      h.className = 'health bad';
      const badge = document.getElementById('live');
      badge.textContent = 'gone';
      badge.classList.add('down');
    };
    events.addEventListener('gone', gone);
    // A stream refused for good: the lab gone from this link (403), or too many of this
    // link's pages open (429), which is not the same news.
    events.addEventListener('error', async () => {
      if (events.readyState !== EventSource.CLOSED) return;
      const r = await fetch(base, { method: 'HEAD' }).catch(() => null);
      if (r && r.ok) {
        const badge = document.getElementById('live');
        badge.textContent = 'not live: too many pages of this link are open; close some and reload';
        badge.classList.add('down');
      } else {
        gone();
      }
    });
    events.addEventListener('guest', e => {
      const d = JSON.parse(e.data);
      const box = document.getElementById('tables-' + d.guest);
      if (box) box.innerHTML = d.html;
    });
    // The health line, green when all holds and red when something fails.
    const health = text => {
      const el = document.getElementById('health');
      el.textContent = text;
      el.className = 'health' + (text.startsWith('ok') ? ' ok' : text.startsWith('FAILING') ? ' bad' : '');
    };
    health(document.getElementById('health').textContent);
    events.addEventListener('health', e => health(JSON.parse(e.data).health));
    document.addEventListener('click', e => {
      const b = e.target.closest('button[data-action]');
      if (!b) return;
      const g = b.dataset.guest;
      const result = document.getElementById('result');
      switch (b.dataset.action) {
        case 'open-terminal': openTerminal(base, g); break;
        case 'check': post(base + 'check', b, result); break;
        case 'capture': {
          const to = document.querySelector('select.capture-to[data-guest="' + CSS.escape(g) + '"]');
          post(base + 'capture/' + encodeURIComponent(g) + (to && to.value ? '?to=' + encodeURIComponent(to.value) : ''), b, result);
          break;
        }
        case 'reset': post(base + 'reset' + (g ? '?guest=' + encodeURIComponent(g) : ''), b, result); break;
      }
    });
    // As many terminals as the link may hold open by themselves; the others on demand.
    [...document.querySelectorAll('section.guest')].slice(0, limit || 1)
      .forEach(s => openTerminal(base, s.dataset.guest));
  }

  return { classPage, labPage };
})();
