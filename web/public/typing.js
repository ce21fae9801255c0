// "Send to guest": the text box typed into the guest as key presses, paced.
//
// Key events that reach QEMU faster than the guest takes them fill bounded queues (QEMU's
// input queue, the emulated PS/2 keyboard's), and the rest is dropped without a word:
// sent in a burst, a few hundred characters lose everything past ~170, and a lost Shift
// release turns what follows into capitals. So every key event (a press or a release)
// goes out KEY_EVENT_INTERVAL_MS after the one before. Measured against the tiny test
// guest under TCG: of 400 characters in five lines sent at one character per 15 ms, the
// last two lines came out garbled; at one event per 12 ms (24 ms a character, 48 with
// Shift) all arrive. The page shows progress,
// offers Stop, and says what really happened: all typed, stopped after N, or the
// connection lost after N.

import { keysForChar } from './keys.js';

export const KEY_EVENT_INTERVAL_MS = 12;

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// Types `text` through `rfb`, one key event per `interval` ms. Resolves to
// { status: 'completed' | 'stopped' | 'lost', typed, total, skipped }, where `typed`
// counts the characters sent (skipped ones included: they were passed over, not lost).
export async function typeText(rfb, text, { interval = KEY_EVENT_INTERVAL_MS, signal, onProgress } = {}) {
    const chars = [...text.replace(/\r\n?/g, '\n')];
    let lost = false;
    const onDisconnect = () => { lost = true; };
    rfb.addEventListener('disconnect', onDisconnect);
    let typed = 0;
    let skipped = 0;
    try {
        for (const ch of chars) {
            if (lost) return { status: 'lost', typed, total: chars.length, skipped };
            if (signal && signal.aborted) return { status: 'stopped', typed, total: chars.length, skipped };
            const keys = keysForChar(ch);
            if (keys) {
                // Pressed in order, released in reverse (Shift around the character).
                const events = [...keys.map((key) => [key, true]), ...[...keys].reverse().map((key) => [key, false])];
                for (const [[keysym, code], down] of events) {
                    if (lost) break;
                    rfb.sendKey(keysym, code, down);
                    await sleep(interval);
                }
                if (lost) return { status: 'lost', typed, total: chars.length, skipped };
            } else {
                skipped++;
            }
            typed++;
            if (onProgress) onProgress(typed, chars.length);
        }
        // A close that came while the last keys were on their way.
        if (lost) return { status: 'lost', typed, total: chars.length, skipped };
        return { status: 'completed', typed, total: chars.length, skipped };
    } finally {
        rfb.removeEventListener('disconnect', onDisconnect);
    }
}

export function describe({ status, typed, total, skipped }) {
    const of = (n) => `${n} of ${total} character${total === 1 ? '' : 's'}`;
    let text;
    if (status === 'completed') text = `Typed all ${total} character${total === 1 ? '' : 's'}.`;
    else if (status === 'stopped') text = `Stopped after ${of(typed)}.`;
    else text = `Connection lost after ${of(typed)}; the rest was not typed.`;
    if (skipped) text += ` ${skipped} character(s) that are not plain ASCII were skipped.`;
    return text;
}

// The text box, Send and Stop. `getRfb` gives the current connection.
export function setupTyping(getRfb, focusScreen) {
    const $ = (id) => document.getElementById(id);
    const text = $('clipboard-text');
    const send = $('clipboard-send');
    const stop = $('clipboard-stop');
    const note = $('clipboard-note');
    let job = null;  // the AbortController of the typing under way

    function busy(on) {
        document.body.dataset.typing = on ? 'yes' : 'no';
        stop.hidden = !on;
        // Send stays disabled while typing; when idle, the page's state decides (setState).
        if (on) send.disabled = true;
        else send.disabled = document.body.dataset.state !== 'connected' || document.body.dataset.mode === 'view-only';
    }

    send.addEventListener('click', async () => {
        const rfb = getRfb();
        if (!rfb || job) return;
        const value = text.value;
        if (!value) {
            note.textContent = 'Nothing to send: write text in the box first.';
            return;
        }
        rfb.clipboardPasteFrom(value);  // for guests with a clipboard agent
        job = new AbortController();
        busy(true);
        const result = await typeText(rfb, value, {
            signal: job.signal,
            onProgress: (done, total) => { note.textContent = `Typing ${done}/${total}…`; },
        });
        job = null;
        busy(false);
        note.textContent = describe(result);
        document.body.dataset.typed = result.status;
        focusScreen();
    });

    stop.addEventListener('click', () => {
        if (job) job.abort();
    });
}
