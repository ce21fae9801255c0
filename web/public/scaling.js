// Scaling: fit to window, 1:1 (panned by dragging on touch screens), or remote resize.
//
// Remote resize asks the VNC server to change the VM's screen size (noVNC's
// resizeSession). Many servers cannot: noVNC only asks a server that supports
// ExtendedDesktopSize, and QEMU, which does, forwards the request to the display device,
// which the standard VGA ignores. noVNC reports neither case, so the page looks: when the
// VM's screen has not taken the window's size a moment after the request, it switches to
// fit and says why.

import { load, save } from './storage.js';

const RESIZE_WAIT_MS = 2500;  // noVNC waits up to 100 ms to send; QEMU answers at its next update
const coarse = matchMedia('(pointer: coarse)');

export function setupScaling(getRfb, focusScreen) {
    const $ = (id) => document.getElementById(id);
    const scale = $('scale');
    const pan = $('pan');
    const note = $('scale-note');
    const screen = $('screen');
    let check = 0;  // the pending remote-resize check

    const saved = load('console.scale');
    if (saved && [...scale.options].some((o) => o.value === saved)) scale.value = saved;

    function say(text) {
        note.textContent = text;
        note.hidden = !text;
    }

    function setPan(on) {
        const rfb = getRfb();
        if (rfb) rfb.dragViewport = on;
        pan.setAttribute('aria-pressed', String(on));
    }

    // `connected`: called from RFB's connect event (whichever listener set the page's state first).
    function apply(connected = document.body.dataset.state === 'connected') {
        const rfb = getRfb();
        if (!rfb) return;
        clearTimeout(check);
        const mode = scale.value;
        rfb.scaleViewport = mode === 'fit';
        // 1:1 on a touch screen: the screen is clipped to the window and panned by
        // dragging (noVNC's viewport), since a touch on the canvas is a mouse event.
        rfb.clipViewport = mode === 'none' && coarse.matches;
        rfb.resizeSession = mode === 'remote';
        if (mode !== 'none') setPan(false);
        pan.hidden = !(mode === 'none' && rfb.clippingViewport);
        if (mode === 'remote') checkRemote(rfb, connected);
        else say('');
    }

    function fallBack(reason) {
        scale.value = 'fit';
        apply();
        say(`${reason} Scaled to fit instead.`);
        document.body.dataset.resizeFallback = 'yes';
    }

    // Did the server take the window's size? Asked once the first frame is in.
    function checkRemote(rfb, connected) {
        if (document.body.dataset.mode === 'view-only') {
            fallBack('A view-only link cannot resize the VM’s screen.');
            return;
        }
        if (!connected) return;  // asked again on connect
        say('');
        check = setTimeout(() => {
            if (rfb !== getRfb() || scale.value !== 'remote') return;
            const canvas = screen.querySelector('canvas');
            if (!canvas || !canvas.width) return;
            const off = Math.abs(canvas.width - screen.clientWidth) > 2
                || Math.abs(canvas.height - screen.clientHeight) > 2;
            if (off) fallBack(`The VM’s display did not resize (its screen stays ${canvas.width}×${canvas.height}; `
                + 'QEMU’s standard VGA cannot follow the window, virtio-gpu with a guest agent can).');
        }, RESIZE_WAIT_MS);
    }

    scale.addEventListener('change', () => {
        delete document.body.dataset.resizeFallback;
        save('console.scale', scale.value);
        apply();
        focusScreen();
    });
    pan.addEventListener('click', () => setPan(pan.getAttribute('aria-pressed') !== 'true'));
    coarse.addEventListener('change', () => apply());

    return {
        attach(rfb) {
            rfb.addEventListener('clippingviewport', () => {
                pan.hidden = !(scale.value === 'none' && rfb.clippingViewport);
                if (pan.hidden) setPan(false);
            });
            rfb.addEventListener('connect', () => apply(true));
            apply();
        },
    };
}
