// The serial-console page: one VM's serial console in xterm.js, through the broker.
//
// The page is served for a link at {base}/console?token=… and lives at
// {base}/console/{uuid}/terminal once session.js has taken the token out of the address
// bar. session.js opens the WebSocket ({base}/console/{uuid}/websockify, ?takeover=1 to
// take a busy console), proves who the page is on it (the broker's session frame says
// whether this link may take a busy console over) and hands it over, open; what the page
// says after a close is decided there too.
// Binary frames are raw terminal bytes both ways; text frames are JSON control messages
// (history, live, dropped, pong from the broker; resize, ping from us).
// xterm.js is served unmodified from its npm packages at {base}/static/xterm/.

import { Terminal } from './xterm/xterm/lib/xterm.mjs';
import { FitAddon } from './xterm/addon-fit/lib/addon-fit.mjs';
import { closeReason } from './closecodes.js';
import { PageLink } from './session.js';
import { mirrorBlockedStyles } from './cspstyles.js';

const $ = (id) => document.getElementById(id);
const ui = {
    name: $('domain-name'),
    status: $('status'),
    screen: $('screen'),
    reconnect: $('reconnect'),
    takeOver: $('take-over'),
    size: $('size'),
    fontSize: $('font-size'),
    scrollback: $('scrollback'),
    fullscreen: $('fullscreen'),
    keys: $('keys'),
    copy: $('copy'),
    hideToolbar: $('hide-toolbar'),
    showToolbar: $('show-toolbar'),
    clipboardText: $('clipboard-text'),
    clipboardSend: $('clipboard-send'),
    clipboardNote: $('clipboard-note'),
    sizeNote: $('size-note'),
    sizeText: $('size-text'),
    sizeCommand: $('size-command'),
    sizeSend: $('size-send'),
    viewOnlyBadge: $('view-only-badge'),
};

// Close reasons that name the serial console; the rest are shared with the VNC page.
const SERIAL_REASONS = {
    4202: 'The virtual machine has no such serial console.',
    4203: 'The serial console could not be opened.',
    4301: 'The serial console was closed while the VM kept running.',
};
const BUSY = 4208;        // someone else holds the console
const TAKEN_OVER = 4303;  // someone else took it from us

// What the Keys menu sends: keys a phone keyboard lacks. Arrows depend on the mode the
// guest set (application cursor keys, as used by full-screen programs).
const KEYS = {
    'esc': () => '\x1b',
    'tab': () => '\t',
    'ctrl-c': () => '\x03',
    'ctrl-d': () => '\x04',
    'ctrl-z': () => '\x1a',
    'ctrl-l': () => '\x0c',
    'up': () => arrow('A'),
    'down': () => arrow('B'),
    'right': () => arrow('C'),
    'left': () => arrow('D'),
};

// A quiet console still answers our pings; a ping unanswered for this long means the
// connection is gone (a laptop that slept, a proxy that dropped it without a close).
// Counted from the ping, not from the last message: a hidden tab's timers may run only
// once a minute.
const PING_EVERY_MS = 20_000;
const PONG_WAIT_MS = 30_000;
const SETTLE_MS = 2_000;

const encoder = new TextEncoder();
let session = null;    // the broker's session frame
// The link's mode, from the broker: a view-only link's input is dropped by the broker;
// the page just does not offer (or send) what would be dropped.
let viewOnly = false;
let socket = null;     // the current WebSocket; null while disconnected
let replaying = false; // earlier output is being written: the terminal's answers to old queries must not reach the guest
let lastHeard = 0;     // when the broker last sent anything
let pingSent = 0;      // when our unanswered ping went out; 0: none outstanding
let pinger = 0;
let settle = 0;

// xterm.js's DOM renderer styles itself with <style> elements and style attributes,
// which our Content-Security-Policy (no 'unsafe-inline') refuses: copy them into
// constructed style sheets, which the policy allows. See cspstyles.js.
mirrorBlockedStyles(ui.screen);

const term = new Terminal({
    cols: 80,
    rows: 24,
    scrollback: 10000,
    fontSize: 14,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace',
    cursorBlink: true,
    theme: { background: '#101113', foreground: '#e8e8ea', cursor: '#e8e8ea', selectionBackground: '#5b8def80' },
});
const fit = new FitAddon();
term.loadAddon(fit);
term.open(ui.screen);
// For the tests and the browser's console: the terminal's buffer says what is on screen.
globalThis.term = term;

// -- connection --------------------------------------------------------------------------

function setState(state, message) {
    document.body.dataset.state = state;
    ui.status.textContent = message;
    const live = state === 'connected';
    document.querySelectorAll('.needs-connection').forEach((el) => { el.disabled = !live || viewOnly; });
    ui.reconnect.disabled = state === 'connecting' || state === 'connected';
    if (state !== 'disconnected') ui.takeOver.hidden = true;
}

// The broker's session frame, on every connection: who we are and what the link allows.
function describeSession(body) {
    session = body;
    viewOnly = body.mode === 'view-only';
    document.body.dataset.mode = body.mode || 'interactive';
    ui.viewOnlyBadge.hidden = !viewOnly;
    ui.clipboardText.disabled = viewOnly;
    term.options.disableStdin = viewOnly;  // no keystrokes, pastes or answers to send
    ui.name.textContent = body.domain.name;
    const device = body.console ? `console ${body.console}; ` : '';
    ui.name.title = `UUID ${body.domain.uuid}; ${device}session valid until ${new Date(body.expires_at).toLocaleString()}`;
    // First-strong isolate: a name holding bidi overrides cannot reorder the rest of the title.
    document.title = `\u2068${body.domain.name}\u2069 – Serial console`;
}

// The socket is open and authorized: from here on it carries the console.
function attach(ws) {
    socket = ws;
    ws.addEventListener('message', (event) => received(ws, event));
    opened(ws);
}

// The broker accepts every socket before it opens the console, so that a refusal
// (busy, VM stopped, …) can carry its close code: an open socket is not yet a console.
// The console is open once the broker speaks (first the history message), or when it
// has not refused within a moment (a broker that sends no history message).
function opened(ws) {
    if (ws !== socket) return;
    lastHeard = Date.now();
    pingSent = 0;
    pinger = setInterval(keepalive, PING_EVERY_MS);
    settle = setTimeout(() => ready(ws), SETTLE_MS);
    delete document.body.dataset.history;
    // An automatic retry keeps saying what it waits for until the console is really back.
    if (document.body.dataset.state !== 'waiting') ui.status.textContent = 'Opening the console…';
    sendControl({ type: 'resize', cols: term.cols, rows: term.rows });
}

function ready(ws) {
    clearTimeout(settle);
    if (ws !== socket || document.body.dataset.state === 'connected') return;
    link.live();
    setState('connected', viewOnly ? 'Connected (view only)' : 'Connected');
    term.focus();
}

function received(ws, event) {
    if (ws !== socket) return;
    lastHeard = Date.now();
    ready(ws);
    if (typeof event.data === 'string') control(event.data);
    // Bytes as they came: xterm.js decodes UTF-8 as a stream, so a character split
    // across two frames still renders as one.
    else term.write(new Uint8Array(event.data));
}

// The broker's control messages. Unknown ones are ignored, so the broker may add more.
function control(text) {
    let message;
    try { message = JSON.parse(text); } catch { return; }
    if (!message || typeof message !== 'object') return;
    if (message.type === 'history') history(message);
    else if (message.type === 'live') live();
    else if (message.type === 'dropped') dropped(Number(message.bytes) || 0);
}

function history(message) {
    if (message.available) {
        // The replay holds what is on screen already: start from a clean terminal
        // (ESC c, in the write queue so it lands after anything still being drawn).
        replaying = true;
        document.body.dataset.history = 'replaying';
        term.write('\x1bc');
        return;
    }
    // The broker's hint says that there is no history and how to keep one.
    document.body.dataset.history = 'unavailable';
    notice('2', `[${message.hint || 'No earlier output is available.'}]`);
}

// The broker sends this after the history message either way; only after a replay is
// there anything to wait for.
function live() {
    if (!replaying) return;
    // The write queue is parsed later; once everything before this point is, the
    // terminal's answers are to the live guest again (on this connection, if still ours).
    const ws = socket;
    term.write('', () => {
        if (ws !== socket) return;
        replaying = false;
        document.body.dataset.history = 'replayed';
    });
}

// Today's broker writes its own dim notice into the byte stream where it dropped
// output; this is the control message of the agreed contract, should it send one.
function dropped(bytes) {
    notice('7', `[${formatBytes(bytes)} of output dropped here: this browser did not read fast enough]`);
}

// A line of our own in the terminal: CAN first ends any escape sequence the guest's
// output left open, and a reset after it keeps the guest's colours out of it.
// `sgr` is the style: 2 dim, 7 reverse.
function notice(sgr, text) {
    const clean = text.replace(/[\x00-\x1f\x7f-\x9f]/g, ' ');
    const newline = term.buffer.active.cursorX ? '\r\n' : '';
    term.write(`\x18\x1b[0m${newline}\x1b[${sgr}m${clean}\x1b[0m\r\n`);
}

function describe(event) {
    const busy = event.code === BUSY || event.code === TAKEN_OVER;
    const advice = busy ? takeOverAdvice(event) : '';
    return `${closeReason(event, SERIAL_REASONS)}${advice && ` ${advice}`}`;
}

function closed(event, state) {
    socket = null;
    replaying = false;
    clearInterval(pinger);
    clearTimeout(settle);
    const busy = event.code === BUSY || event.code === TAKEN_OVER;
    ui.takeOver.hidden = !(state === 'disconnected' && busy && session && session.may_take_over);
}

// What the user can do about a console someone else holds. The broker's busy reason
// already says whether this link may take it over; without one (a proxy dropped it)
// we say it. Who can act when this link may not: an operator, who can end the other
// session (a `virsh console` left open, another user's page).
function takeOverAdvice(event) {
    const may = session && session.may_take_over;
    if (event.code === BUSY) {
        if (may) return event.reason ? '' : 'Take over to end the other session and use the console here.';
        return `${event.reason ? '' : 'This link may not take the console over. '}An operator can end the other session.`;
    }
    return may
        ? 'Take over to get it back (that ends the other session).'
        : 'Reconnect once the other session has ended.';
}

// Our side of the keepalive: the broker's WebSocket pings tell it we are alive, but
// nothing tells us that it is, short of an answer.
function keepalive() {
    if (!socket) return;
    const now = Date.now();
    if (pingSent && lastHeard < pingSent) {
        if (now - pingSent < PONG_WAIT_MS) return;  // still waiting
        const seconds = Math.round((now - lastHeard) / 1000);
        link.fail(socket, 1006, `No answer from the broker for ${seconds} s; the connection is lost.`);
        return;
    }
    pingSent = now;
    sendControl({ type: 'ping' });
}

function sendBytes(bytes) {
    if (viewOnly) return;
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(bytes);
}

function sendControl(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

// Keystrokes, pastes and the terminal's answers to the guest's queries, as UTF-8.
term.onData((data) => {
    if (!replaying) sendBytes(encoder.encode(data));
});
// Mouse reports in the legacy encoding are bytes, not text: one byte per char code.
term.onBinary((data) => {
    if (!replaying) sendBytes(Uint8Array.from(data, (ch) => ch.charCodeAt(0) & 0xff));
});
term.onResize(({ cols, rows }) => sendControl({ type: 'resize', cols, rows }));

// -- size, font, scrollback --------------------------------------------------------------

// A serial guest cannot learn the terminal's size: we keep a fixed one unless asked, and
// after a change show the command that tells the guest.
function applySize() {
    const fitting = ui.size.value === 'fit';
    ui.screen.classList.toggle('fit', fitting);
    if (fitting) {
        const proposed = fit.proposeDimensions();
        if (proposed && proposed.cols > 0 && proposed.rows > 0) term.resize(proposed.cols, proposed.rows);
    } else {
        const [cols, rows] = ui.size.value.split('x').map(Number);
        term.resize(cols, rows);
    }
    showSizeNote();
}

function sttyCommand() {
    return `stty rows ${term.rows} cols ${term.cols}`;
}

function showSizeNote() {
    const standard = term.cols === 80 && term.rows === 24;
    ui.sizeNote.hidden = standard;
    ui.sizeText.textContent = `The terminal is ${term.cols}×${term.rows}; the guest cannot tell. Run:`;
    ui.sizeCommand.textContent = sttyCommand();
}

let refitTimer = 0;
function refitSoon() {
    if (ui.size.value !== 'fit') return;
    clearTimeout(refitTimer);
    refitTimer = setTimeout(applySize, 150);
}
window.addEventListener('resize', refitSoon);

function applyFontSize() {
    term.options.fontSize = Number(ui.fontSize.value);
    applySize();  // fit mode: fewer or more cells now fit
}

function applyScrollback() {
    term.options.scrollback = Number(ui.scrollback.value);
}

// Settings survive reloads; a stored value that is not an option any more is ignored.
function remembered(select, key, apply) {
    try {
        const saved = localStorage.getItem(key);
        if (saved && [...select.options].some((o) => o.value === saved)) select.value = saved;
    } catch { /* storage off */ }
    select.addEventListener('change', () => {
        apply();
        try { localStorage.setItem(key, select.value); } catch { /* storage off */ }
        term.focus();
    });
}

remembered(ui.size, 'terminal.size', applySize);
remembered(ui.fontSize, 'terminal.fontSize', applyFontSize);
remembered(ui.scrollback, 'terminal.scrollback', applyScrollback);
term.options.fontSize = Number(ui.fontSize.value);
applyScrollback();
applySize();

// Typed, not pasted: a shell in bracketed-paste mode would hold a pasted line back
// until Enter, and this button is meant to run it.
ui.sizeSend.addEventListener('click', () => {
    sendBytes(encoder.encode(`${sttyCommand()}\r`));
    term.focus();
});

// -- copy and paste ----------------------------------------------------------------------

async function copySelection() {
    const text = term.getSelection();
    if (!text) return;
    try {
        await navigator.clipboard.writeText(text);
        ui.clipboardNote.textContent = 'Copied.';
    } catch {
        // No clipboard API (plain HTTP) or no permission: hand the text over to copy by hand.
        ui.clipboardText.value = text;
        ui.clipboardNote.textContent = 'The browser refused the clipboard; the text is in the box.';
    }
}

term.onSelectionChange(() => { ui.copy.disabled = !term.hasSelection(); });
ui.copy.addEventListener('click', copySelection);

// As in Linux terminals: Ctrl+C and Ctrl+V are the guest's (interrupt, literal next);
// Ctrl+Shift+C copies and Ctrl+Shift+V pastes.
term.attachCustomKeyEventHandler((event) => {
    if (!event.ctrlKey || !event.shiftKey || event.altKey || event.metaKey) return true;
    if (event.code === 'KeyC') {
        if (event.type === 'keydown') {
            event.preventDefault();
            copySelection();
        }
        return false;
    }
    // Not handled by xterm.js, so the browser pastes, and xterm.js's paste handler sends it.
    return event.code !== 'KeyV';
});

// Text from the box goes in as a paste: line ends become CR as from a terminal's Enter
// key, and a guest that asked for bracketed paste gets it bracketed.
ui.clipboardSend.addEventListener('click', () => {
    const text = ui.clipboardText.value;
    if (!text) return;
    term.paste(text);
    const lines = text.split(/\r\n|\r|\n/).length;
    ui.clipboardNote.textContent = lines > 1 ? `Sent ${lines} lines.` : 'Sent.';
    term.focus();
});

// -- other controls ----------------------------------------------------------------------

function arrow(letter) {
    return (term.modes.applicationCursorKeysMode ? '\x1bO' : '\x1b[') + letter;
}

ui.keys.addEventListener('change', () => {
    const key = KEYS[ui.keys.value];
    ui.keys.value = '';  // a menu of actions, not a setting
    if (key) sendBytes(encoder.encode(key()));
    term.focus();
});

const link = new PageLink('terminal', 'serial', { setState, describe, session: describeSession, attach, closed }, ui);

ui.reconnect.addEventListener('click', () => link.connect());
ui.takeOver.addEventListener('click', () => link.connect({ takeover: true }));

// Full screen takes the toolbar along, so Reconnect and the keys stay within reach.
const container = $('app');
ui.fullscreen.disabled = !document.fullscreenEnabled;
ui.fullscreen.addEventListener('click', () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else container.requestFullscreen().catch(() => {});
});
document.addEventListener('fullscreenchange', () => {
    ui.fullscreen.textContent = document.fullscreenElement ? 'Exit fullscreen' : 'Fullscreen';
    refitSoon();
});

// On a phone the toolbar takes half the screen: it can be folded away.
function showToolbar(shown) {
    document.body.dataset.toolbar = shown ? 'shown' : 'hidden';
    ui.showToolbar.hidden = shown;
    (shown ? ui.hideToolbar : ui.showToolbar).focus();
    refitSoon();
}
ui.hideToolbar.addEventListener('click', () => showToolbar(false));
ui.showToolbar.addEventListener('click', () => showToolbar(true));

function formatBytes(n) {
    if (n < 1024) return `${n} bytes`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

link.connect();
