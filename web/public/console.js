// The console page: one VM screen through the broker, on noVNC's core RFB class.
//
// The page lives at {base}/console/{uuid}/ and talks only to URLs relative to it:
//   ./session     GET, the session cookie says which console we may open
//   ./websockify  the WebSocket the broker relays to the VM's VNC server
// noVNC is served unmodified from its npm package at {base}/static/novnc/.
// (Module imports resolve against this file, {base}/static/console.js, while fetch
// and new URL(..., location.href) resolve against the page: hence ./novnc/ here.)

import RFB from './novnc/core/rfb.js';
import { closeReason } from './closecodes.js';
import { fetchSession } from './pagesession.js';
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

// Ask the broker who we are, then connect. Also what Reconnect does: the session
// cookie stays valid for a while, so no new link is needed.
async function start() {
    delete document.body.dataset.closeCode;
    setState('connecting', 'Checking the console session…');
    const { session: body, error } = await fetchSession();
    if (error) {
        setState('error', error);
        return;
    }
    // A serial console's session opened on this page (an old bookmark, a hand-made URL):
    // its socket does not speak VNC, so go to the terminal page.
    if (body.kind === 'serial') {
        location.replace('./terminal');
        return;
    }
    viewOnly = body.mode === 'view-only';
    document.body.dataset.mode = body.mode || 'interactive';
    ui.viewOnlyBadge.hidden = !viewOnly;
    ui.clipboardText.disabled = viewOnly;
    ui.name.textContent = body.domain.name;
    ui.name.title = `UUID ${body.domain.uuid}; session valid until ${new Date(body.expires_at).toLocaleString()}`;
    // First-strong isolate: a name holding bidi overrides cannot reorder the rest of the title.
    document.title = `\u2068${body.domain.name}\u2069 – Console`;
    connect();
}

function connect() {
    setState('connecting', 'Connecting…');
    failure = '';
    const url = new URL('./websockify', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';

    // We open the socket ourselves, rather than give RFB a URL, because RFB's
    // 'disconnect' event does not say why: the broker's close code and reason do.
    // RFB 1.7 accepts a socket that is still connecting (or open; not closed) and
    // takes it over by setting its on* handlers, so ours must be addEventListener.
    // Ours is added first, so it runs before RFB's onclose (see closed()).
    const ws = new WebSocket(url, ['binary']);
    let ended = false;  // RFB has reported 'disconnect'
    ws.addEventListener('close', (event) => closed(ws, event, ended));
    socket = ws;

    rfb = new RFB(ui.screen, ws, { shared: true });
    rfb.viewOnly = viewOnly;
    rfb.addEventListener('disconnect', () => { ended = true; });
    rfb.addEventListener('connect', () => {
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

function closed(ws, event, ended) {
    if (ws !== socket) return;  // a socket from an earlier attempt
    // A close while RFB is still handshaking counts as a protocol failure to RFB,
    // which logs it as a console error. For us a refusal is an ordinary end:
    // disconnecting first (we run before RFB's own close handler) makes it one.
    if (!ended) rfb.disconnect();
    document.body.dataset.closeCode = String(event.code);
    const reason = event.reason || failure || closeReason(event, VNC_REASONS);
    setState('disconnected', `Disconnected: ${reason}`);
}

ui.reconnect.addEventListener('click', start);

start();
