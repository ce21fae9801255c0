// The console page: one VM screen through the broker, on noVNC's core RFB class.
//
// The page is served for a link at {base}/console?token=… and lives at {base}/console/{uuid}/
// once session.js has taken the token out of the address bar. session.js opens the
// WebSocket ({base}/console/{uuid}/websockify), proves who the page is on it and hands it
// over, open, to noVNC; what the page says after a close is decided there too.
// noVNC is served unmodified from its npm package at {base}/static/novnc/.
// (Module imports resolve against this file, {base}/static/console.js: hence ./novnc/ here.)

import RFB from './novnc/core/rfb.js';
import { closeReason } from './closecodes.js';
import { PageLink, keepLastFrame, dropLastFrame } from './session.js';
import { setupControls } from './controls.js';

const $ = (id) => document.getElementById(id);
const ui = {
    name: $('domain-name'),
    status: $('status'),
    screen: $('screen'),
    reconnect: $('reconnect'),
    clipboardText: $('clipboard-text'),
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

let rfb = null;      // the current RFB object; a new one for every connection
let socket = null;   // the WebSocket given to it
let ended = false;   // RFB has reported 'disconnect' for it
let drawn = false;   // RFB connected on it, so its canvas holds the VM's screen
let failure = '';    // why noVNC itself gave up (it closes the socket with no reason)
// The link's mode, from the broker: view-only links show the screen only. The broker
// drops their input itself; the page just does not offer what would be dropped.
let viewOnly = false;
// The toolbar, keys, typing, touch and settings (controls.js): told of every new RFB.
const controls = setupControls(() => rfb);

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
    controls.attach(rfb);
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

ui.reconnect.addEventListener('click', () => link.connect());

link.connect();
