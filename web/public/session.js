// The console page's connection to the broker, shared by the VNC page and the terminal page:
// who the page is, the socket that proves it, and what the page says and does after a close.
//
// The broker serves a page for a link (…/console?token=T) without spending the link, so a
// link previewer that fetches it leaves it usable. Here the page takes the token out of the
// address bar at once, then spends it as the first frame of its WebSocket
// (…/console/{uuid}/websockify):
//   → {"token": T}                first time; later {"pass": P}
//   ← {"type": "session", "pass": P, "domain": {name, uuid}, kind, console, mode,
//      may_take_over, expires_at, expires_in}   then the console's stream
// The pass lets Reload, Reconnect and the automatic reconnects (after a broker restart,
// while a stopped VM starts again) work until the session ends. It lives in memory and in
// this tab's sessionStorage; there is no cookie, so the page works in a panel's cross-site
// iframe. The page's own deadline is expires_in (seconds left) counted from when the frame
// arrived, so a client clock that is off does not matter; it only stops the automatic
// retries: that a session is over for good is the broker's word (4105).
//
// The broker fills in the page's <html data-console="{uuid}" data-console-dir="…">: the
// console's UUID and the relative URL of /console/{uuid}/ from where the page was served.

const root = document.documentElement.dataset;
const uuid = root.console || '';
// Resolved now, while location is still the URL the page was served at.
const consoleDir = new URL(root.consoleDir || './', location.href);
const storageKey = `console-session:${uuid}`;

// Codes after which no reconnect can work: the link or pass is spent, ended or refused.
const FINAL = new Set([4100, 4101, 4102, 4103, 4104, 4105, 4106, 4305]);
// The VM is not running: the pass waits for it to start again.
const VM_DOWN = new Set([4201, 4300]);
const GOING_AWAY = 1001;  // the broker is restarting (or stopping)
const RESTART = 1012;     // uvicorn's own close for a socket still opening at shutdown
const LOST = 1006;        // no close frame: the broker (or its proxy) is not there

const NO_SESSION = 'This browser tab holds no console session; ask for a new console link.';
const RESTARTING = 'The console broker is restarting; this page reconnects by itself when it is back.';
const VM_WAITING = 'The virtual machine is not running; waiting for it to start (this page reconnects by itself).';

const TIME_UP = 'This console session’s time is up, so the page stopped retrying; Reconnect tries once more, or ask for a new console link.';

// Automatic retries back off: each one costs the broker a libvirt lookup, a log line and
// an audit event, and a VM may stay off for the whole session. The delay doubles from the
// first to the most, and starts again from the first once a connection succeeds.
const VM_RETRY_FIRST_MS = 3000;
const VM_RETRY_MAX_MS = 30000;
const RESTART_RETRY_FIRST_MS = 500;
const RESTART_RETRY_MAX_MS = 8000;

function backoff(first, most, retries) {
    return Math.min(most, first * 2 ** Math.min(retries, 16));
}

// The session's end on this browser's clock: now plus the broker's expires_in, else
// (an older broker) its absolute expires_at.
function deadline(info) {
    const seconds = Number(info.expires_in);
    if (info.expires_in !== undefined && info.expires_in !== null && Number.isFinite(seconds)) {
        return Date.now() + seconds * 1000;
    }
    return Date.parse(info.expires_at) || 0;
}

function load() {
    try {
        return JSON.parse(sessionStorage.getItem(storageKey) || 'null');
    } catch {
        return null;  // storage refused (some third-party frames) or spoilt
    }
}

function save(value) {
    try {
        sessionStorage.setItem(storageKey, JSON.stringify(value));
    } catch { /* storage refused: the pass lives in memory only */ }
}

// The link's token, out of the address bar before anything else happens. Accepted in the
// query (the broker's links) and in a #token= fragment (never sent to any server).
function takeToken(page) {
    const url = new URL(location.href);
    const fragment = new URLSearchParams(url.hash.slice(1));
    const token = url.searchParams.get('token') || fragment.get('token');
    const clean = new URL(page, consoleDir);
    if (token || url.href !== clean.href) history.replaceState(history.state, '', clean);
    return token;
}

export class PageLink {
    // hooks: {
    //   setState(state, message)  the page's status: connecting, connected, waiting (an
    //                             automatic reconnect is due), disconnected, error (final)
    //   describe(closeEvent)      the words for a close, in this page's kind
    //   session(info)             the broker's session frame (name, mode, …), on each socket
    //   attach(ws, info)          the open, authorized socket: the page relays from here on
    //   closed(closeEvent, state) after the page's status says why it closed
    // }
    constructor(page, kind, hooks, { screen, reconnect }) {
        this.page = page;  // '' (the VNC page) or 'terminal', relative to /console/{uuid}/
        this.kind = kind;
        this.hooks = hooks;
        this.screen = screen;
        this.reconnect = reconnect;
        this.socket = null;
        this.info = null;       // the last session frame
        this.timer = 0;
        this.retries = 0;       // automatic retries since the last connection that worked
        this.attached = null;   // the socket handed to the page (hooks.attach)
        const token = takeToken(page);
        const stored = load();
        this.credential = token ? { token } : stored && (stored.pass ? { pass: stored.pass } : stored.token ? { token: stored.token } : null);
        this.expires = token || !stored ? 0 : stored.deadline || Date.parse(stored.expires_at) || 0;
        if (token) save({ token });  // until the broker exchanges it: a reload in between still works
    }

    get expired() {
        return this.expires && Date.now() >= this.expires;
    }

    // Open a socket. `quiet`: an automatic retry, which keeps the waiting message up.
    connect({ takeover = false, quiet = false } = {}) {
        clearTimeout(this.timer);
        this.timer = 0;
        const automatic = quiet;
        this.drop();
        // Reconnect pressed while an automatic retry was due: try now, and keep waiting if
        // that fails the same way (the broker still away, the VM still off).
        if (document.body.dataset.state === 'waiting' && !takeover) quiet = true;
        if (!quiet) this.retries = 0;
        if (!this.credential) return this.end(NO_SESSION);
        // Past the page's own deadline only a person's Reconnect (or a reload) still tries:
        // the broker says whether the session is over (4105).
        if (automatic && this.expired) return this.timeUp();
        if (!quiet) this.hooks.setState('connecting', takeover ? 'Taking the console over…' : 'Connecting…');
        delete document.body.dataset.closeCode;
        const url = new URL('websockify', consoleDir);
        url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
        if (takeover) url.searchParams.set('takeover', '1');
        const ws = new WebSocket(url, ['binary']);
        ws.binaryType = 'arraybuffer';
        this.socket = ws;
        const credential = this.credential;
        const first = (event) => this.received(ws, event, first);
        // Ours before the page's (and noVNC's) handlers: see closed().
        ws.addEventListener('close', (event) => this.closed(ws, event));
        ws.addEventListener('open', () => {
            if (ws === this.socket) ws.send(JSON.stringify(credential));
            else ws.close(1000);
        });
        ws.addEventListener('message', first);
    }

    // A socket this page no longer wants (Reconnect pressed while an automatic retry was on
    // its way): closed, so that the broker does not relay a session nobody reads (on a
    // serial console it would hold the console against the page's own new socket).
    drop() {
        const ws = this.socket;
        if (!ws) return;
        this.socket = null;
        if (this.attached === ws) {
            this.attached = null;
            this.hooks.closed({ code: 1000, reason: '' }, 'connecting');  // the page lets go of it
        }
        ws.close(1000);
    }

    received(ws, event, listener) {
        ws.removeEventListener('message', listener);
        if (ws !== this.socket) {
            ws.close(1000);  // a stale socket that got through after all
            return;
        }
        let info = null;
        try { info = typeof event.data === 'string' ? JSON.parse(event.data) : null; } catch { /* below */ }
        if (!info || info.type !== 'session' || !info.pass) {
            this.fail(ws, 4100, 'The console broker did not answer as expected; reload the page.');
            return;
        }
        this.info = info;
        this.credential = { pass: info.pass };
        this.expires = deadline(info);
        save({ pass: info.pass, expires_at: info.expires_at, deadline: this.expires });
        // A console of the other kind (a hand-made URL): its page reconnects with the pass.
        if ((info.kind === 'serial') !== (this.kind === 'serial')) {
            this.socket = null;
            ws.close(1000);
            location.replace(new URL(info.kind === 'serial' ? 'terminal' : '', consoleDir));
            return;
        }
        this.hooks.session(info);
        this.attached = ws;
        this.hooks.attach(ws, info);
    }

    // The page's own verdict on a socket (a keepalive that went unanswered): as if it closed so.
    fail(ws, code, reason) {
        if (ws !== this.socket) return;
        this.closed(ws, { code, reason });
        ws.close();
    }

    // Runs before noVNC's own close handler (added later), so the page still sees the last frame.
    closed(ws, event) {
        if (ws !== this.socket) return;  // a socket from an earlier attempt
        this.socket = null;
        this.attached = null;
        const waiting = document.body.dataset.state === 'waiting';
        let state = 'disconnected';
        let message = `Disconnected: ${this.hooks.describe(event)}`;
        let delay = 0;
        if (FINAL.has(event.code) || (event.code === 4200 && this.expired)) {
            state = 'error';
            message = this.hooks.describe(event);
        } else if (VM_DOWN.has(event.code)) {
            state = 'waiting';
            message = VM_WAITING;
            delay = backoff(VM_RETRY_FIRST_MS, VM_RETRY_MAX_MS, this.retries);
        } else if (event.code === GOING_AWAY || event.code === RESTART || (waiting && event.code === LOST)) {
            state = 'waiting';
            message = waiting && document.body.dataset.waitingFor === 'vm' ? VM_WAITING : RESTARTING;
            delay = backoff(RESTART_RETRY_FIRST_MS, RESTART_RETRY_MAX_MS, this.retries);
        }
        if (state === 'waiting' && this.expires && Date.now() + delay >= this.expires) {
            state = 'disconnected';  // no more automatic retries; Reconnect asks the broker
            message = TIME_UP;
        }
        document.body.dataset.closeCode = String(event.code);
        if (state === 'waiting' && !(waiting && event.code === LOST)) {
            document.body.dataset.waitingFor = VM_DOWN.has(event.code) ? 'vm' : 'broker';
        } else if (state !== 'waiting') {
            delete document.body.dataset.waitingFor;
        }
        this.hooks.setState(state, message);
        this.dim(true);
        this.reconnect.hidden = state === 'error';
        this.hooks.closed(event, state);
        if (state === 'waiting') {
            this.retries += 1;
            this.timer = setTimeout(() => this.connect({ quiet: true }), delay);
        }
    }

    // A final state without a socket: nothing to reconnect with.
    end(message) {
        clearTimeout(this.timer);
        this.hooks.setState('error', message);
        this.reconnect.hidden = true;
    }

    // The page's deadline passed while it waited: it stops retrying, a person may still try.
    timeUp() {
        delete document.body.dataset.waitingFor;
        this.hooks.setState('disconnected', TIME_UP);
        this.reconnect.hidden = false;
    }

    // Connected: the screen is live again, and the next wait starts from the first delay.
    live() {
        this.retries = 0;
        delete document.body.dataset.waitingFor;
        this.reconnect.hidden = false;
        this.dim(false);
    }

    // The last picture stays on screen, dimmed, while the page is not connected.
    dim(on) {
        this.screen.style.opacity = on ? '0.5' : '';
    }
}

// noVNC removes its canvas when it disconnects: keep a copy of the last frame in `screen`
// (dimmed with it) until the next connection draws again. Call before noVNC's close handler.
export function keepLastFrame(screen) {
    dropLastFrame(screen);
    const canvas = screen.querySelector('canvas');
    if (!canvas || !canvas.width || !canvas.height) return;
    const copy = document.createElement('canvas');
    copy.width = canvas.width;
    copy.height = canvas.height;
    copy.className = 'last-frame';
    copy.getContext('2d').drawImage(canvas, 0, 0);
    const at = canvas.getBoundingClientRect();
    const box = screen.getBoundingClientRect();
    // Style properties set from script are allowed by the page's CSP (no inline style attribute).
    Object.assign(copy.style, {
        position: 'absolute',
        left: `${at.left - box.left + screen.scrollLeft}px`,
        top: `${at.top - box.top + screen.scrollTop}px`,
        width: `${at.width}px`,
        height: `${at.height}px`,
        pointerEvents: 'none',
    });
    screen.appendChild(copy);
}

export function dropLastFrame(screen) {
    screen.querySelectorAll('canvas.last-frame').forEach((el) => el.remove());
}
