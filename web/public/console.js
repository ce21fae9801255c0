// The console page: one VM screen through the broker, on noVNC's core RFB class.
//
// The page is served for a link at {base}/console?token=… and lives at {base}/console/{uuid}/
// once session.js has taken the token out of the address bar. session.js opens the
// WebSocket ({base}/console/{uuid}/websockify), proves who the page is on it and hands it
// over, open, to noVNC; what the page says after a close is decided there too.
// noVNC is served unmodified from its npm package at {base}/static/novnc/.
// (Module imports resolve against this file, {base}/static/console.js: hence ./novnc/ here.)

import RFB from './novnc/core/rfb.js';
import KeyTable from './novnc/core/input/keysym.js';
import { closeReason } from './closecodes.js';
import { PageLink, keepLastFrame, dropLastFrame } from './session.js';

const $ = (id) => document.getElementById(id);
const ui = {
    name: $('domain-name'),
    status: $('status'),
    screen: $('screen'),
    reconnect: $('reconnect'),
    scale: $('scale'),
    fullscreen: $('fullscreen'),
    ctrlAltDel: $('ctrl-alt-del'),
    keys: $('keys'),
    clipboardText: $('clipboard-text'),
    clipboardSend: $('clipboard-send'),
    clipboardNote: $('clipboard-note'),
    viewOnlyBadge: $('view-only-badge'),
};

// Close reasons that say "VNC"; the rest are shared with the terminal page.
const VNC_REASONS = {
    4202: 'The virtual machine has no VNC console.',
    4203: 'The VNC console could not be reached.',
    4206: 'The VM’s VNC server refused the password libvirt has for it.',
    4207: 'The VNC handshake failed.',
    4301: 'The VNC server closed the connection.',
};

// Key combinations for the "Other keys" menu: [keysym, KeyboardEvent.code] pairs,
// pressed in order and released in reverse. The code lets noVNC send QEMU's
// scancode-based key event, which does not depend on the guest's keymap.
const COMBOS = {
    'ctrl-alt-f1': [[KeyTable.XK_Control_L, 'ControlLeft'], [KeyTable.XK_Alt_L, 'AltLeft'], [KeyTable.XK_F1, 'F1']],
    'ctrl-alt-f2': [[KeyTable.XK_Control_L, 'ControlLeft'], [KeyTable.XK_Alt_L, 'AltLeft'], [KeyTable.XK_F2, 'F2']],
    'alt-tab': [[KeyTable.XK_Alt_L, 'AltLeft'], [KeyTable.XK_Tab, 'Tab']],
    'esc': [[KeyTable.XK_Escape, 'Escape']],
    'ctrl-c': [[KeyTable.XK_Control_L, 'ControlLeft'], [KeyTable.XK_c, 'KeyC']],
};

// Characters that need Shift on a US keyboard. Typed text is sent as keysyms, and
// QEMU turns a keysym into a scancode with its keymap: 'A' and 'a' share one key,
// so without a real Shift press the guest would see 'a'.
const SHIFTED = /[A-Z~!@#$%^&*()_+{}|:"<>?]/;

let rfb = null;      // the current RFB object; a new one for every connection
let socket = null;   // the WebSocket given to it
let ended = false;   // RFB has reported 'disconnect' for it
let drawn = false;   // RFB connected on it, so its canvas holds the VM's screen
let failure = '';    // why noVNC itself gave up (it closes the socket with no reason)
// The link's mode, from the broker: view-only links show the screen only. The broker
// drops their input itself; the page just does not offer what would be dropped.
let viewOnly = false;

function setState(state, message) {
    document.body.dataset.state = state;
    ui.status.textContent = message;
    const live = state === 'connected';
    document.querySelectorAll('.needs-connection').forEach((el) => { el.disabled = !live || viewOnly; });
    ui.reconnect.disabled = state === 'connecting' || state === 'connected';
}

// The broker's session frame, on every connection: who we are and what the link allows.
function session(body) {
    viewOnly = body.mode === 'view-only';
    document.body.dataset.mode = body.mode || 'interactive';
    ui.viewOnlyBadge.hidden = !viewOnly;
    ui.clipboardText.disabled = viewOnly;
    ui.name.textContent = body.domain.name;
    ui.name.title = `UUID ${body.domain.uuid}; session valid until ${new Date(body.expires_at).toLocaleString()}`;
    // First-strong isolate: a name holding bidi overrides cannot reorder the rest of the title.
    document.title = `\u2068${body.domain.name}\u2069 – Console`;
}

// The socket is open and authorized: RFB takes it from here. We open the socket ourselves
// (session.js), rather than give RFB a URL, because RFB's 'disconnect' event does not say
// why: the broker's close code and reason do. RFB 1.7 accepts an open socket and takes it
// over by setting its on* handlers; session.js's close listener was added first, so it
// runs before RFB's onclose (see closed()).
function attach(ws) {
    failure = '';
    ended = false;
    drawn = false;
    socket = ws;
    rfb = new RFB(ui.screen, ws, { shared: true });
    rfb.viewOnly = viewOnly;
    rfb.addEventListener('disconnect', () => { if (ws === socket) ended = true; });
    rfb.addEventListener('connect', () => {
        drawn = true;
        dropLastFrame(ui.screen);
        link.live();
        setState('connected', viewOnly ? 'Connected (view only)' : 'Connected');
        rfb.focus();
    });
    rfb.addEventListener('securityfailure', (event) => {
        failure = `The VNC server refused the connection: ${event.detail.reason || 'security failure'}.`;
    });
    rfb.addEventListener('credentialsrequired', () => {
        failure = 'The VNC server asks for a password; this console does not support that.';
        rfb.disconnect();
    });
    rfb.addEventListener('clipboard', (event) => { ui.clipboardText.value = event.detail.text; });
    applyScale();
}

function describe(event) {
    return event.reason || failure || closeReason(event, VNC_REASONS);
}

function closed() {
    if (!rfb || !socket) return;  // closed before the broker handed the console over
    // The last frame stays, dimmed: RFB removes its canvas once it has disconnected. An
    // attempt that never connected (the VM still off) keeps the copy we have.
    if (drawn) keepLastFrame(ui.screen);
    // A close while RFB is still handshaking counts as a protocol failure to RFB,
    // which logs it as a console error. For us a refusal is an ordinary end:
    // disconnecting first (we run before RFB's own close handler) makes it one.
    if (!ended) rfb.disconnect();
    socket = null;
}

const link = new PageLink('', 'vnc', { setState, describe, session, attach, closed }, ui);

function applyScale() {
    if (!rfb) return;
    rfb.scaleViewport = ui.scale.value === 'fit';
    rfb.resizeSession = ui.scale.value === 'remote';
}

function sendCombo(keys) {
    keys.forEach(([keysym, code]) => rfb.sendKey(keysym, code, true));
    [...keys].reverse().forEach(([keysym, code]) => rfb.sendKey(keysym, code, false));
}

// Type text into the guest as key presses: printable ASCII, Tab and newlines.
// Returns how many characters had to be skipped.
function typeText(text) {
    let skipped = 0;
    for (const ch of text.replace(/\r\n?/g, '\n')) {
        let keysym;
        if (ch === '\n') keysym = KeyTable.XK_Return;
        else if (ch === '\t') keysym = KeyTable.XK_Tab;
        else if (ch >= ' ' && ch <= '~') keysym = ch.charCodeAt(0);  // ASCII keysyms are the char codes
        else { skipped++; continue; }
        // No KeyboardEvent.code: the keysym decides, so QEMU maps it with its keymap.
        if (SHIFTED.test(ch)) {
            sendCombo([[KeyTable.XK_Shift_L, 'ShiftLeft'], [keysym, undefined]]);
        } else {
            rfb.sendKey(keysym, undefined);
        }
    }
    return skipped;
}

ui.reconnect.addEventListener('click', () => link.connect());

ui.scale.addEventListener('change', () => {
    applyScale();
    try { localStorage.setItem('console.scale', ui.scale.value); } catch { /* storage off */ }
});
try {
    const saved = localStorage.getItem('console.scale');
    if (saved && [...ui.scale.options].some((o) => o.value === saved)) ui.scale.value = saved;
} catch { /* storage off */ }

// Full screen takes the toolbar along, so Ctrl-Alt-Del stays within reach.
const container = $('app');
ui.fullscreen.disabled = !document.fullscreenEnabled;
ui.fullscreen.addEventListener('click', () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else container.requestFullscreen().catch(() => {});
});
document.addEventListener('fullscreenchange', () => {
    ui.fullscreen.textContent = document.fullscreenElement ? 'Exit fullscreen' : 'Fullscreen';
});

ui.ctrlAltDel.addEventListener('click', () => {
    rfb.sendCtrlAltDel();
    rfb.focus();
});

ui.keys.addEventListener('change', () => {
    const combo = COMBOS[ui.keys.value];
    ui.keys.value = '';  // a menu of actions, not a setting
    if (combo) {
        sendCombo(combo);
        rfb.focus();
    }
});

ui.clipboardSend.addEventListener('click', () => {
    const text = ui.clipboardText.value;
    const skipped = typeText(text);
    rfb.clipboardPasteFrom(text);  // for guests with a clipboard agent
    ui.clipboardNote.textContent = skipped
        ? `Sent; ${skipped} character(s) that are not plain ASCII were not typed.`
        : 'Sent.';
    rfb.focus();
});

link.connect();
