// Phones and touch screens: an on-screen keyboard, a row of the keys it lacks (Esc,
// Tab, arrows, F1–F12) and sticky Ctrl/Alt/Super.
//
// The soft keyboard comes up for a focused text field, so the Keyboard button focuses a
// hidden one and forwards what is typed into it as keys (as noVNC's own app does): keys
// with a meaning of their own (Enter, Backspace, arrows…) from keydown, text from the
// input event by comparing the field with what it held before, since phone keyboards send
// most keys as "Unidentified" and rewrite words (autocorrect) in place. The field keeps
// some filler text so that Backspace always has something to delete.
//
// A modifier tapped in the row latches (shown pressed) for the next key, from the row,
// the soft keyboard or a real keyboard; tapped again, it lets go.

import { MODIFIERS, NAMED, keysForChar } from './keys.js';
import { KEY_QUEUE_MAX, keyQueue } from './keyqueue.js';

const FILLER = '_'.repeat(64);
// Keys the field's keydown sends itself (then no input event follows).
const KEYDOWN_KEYS = {
    Enter: 'enter', Backspace: 'backspace', Tab: 'tab', Escape: 'esc', Delete: 'delete',
    ArrowUp: 'up', ArrowDown: 'down', ArrowLeft: 'left', ArrowRight: 'right',
    Home: 'home', End: 'end', PageUp: 'pageup', PageDown: 'pagedown',
};
const MODIFIER_KEYS = new Set(['Control', 'Alt', 'Meta', 'Shift', 'AltGraph', 'OS', 'Super', 'Hyper']);

export function setupTouch(getRfb, focusScreen) {
    const $ = (id) => document.getElementById(id);
    const button = $('keyboard');
    const row = $('extra-keys');
    const field = $('soft-keyboard');
    const latched = new Set();
    const note = $('scale-note');  // the page's note line (scaling.js, screenshot.js)
    const queue = keyQueue(getRfb, (lost) => {
        note.textContent = `Too many keys at once: ${lost} dropped (at most ${KEY_QUEUE_MAX} key events wait to be sent).`;
        note.hidden = false;
    });
    const send = queue.send;
    let last = FILLER;

    function showLatched() {
        row.querySelectorAll('[data-modifier]').forEach((key) => {
            key.setAttribute('aria-pressed', String(latched.has(key.dataset.modifier)));
        });
    }

    // Sends keys (a combination: pressed in order, released in reverse) with the latched
    // modifiers held around them, then lets the modifiers go.
    function sendKeys(keys) {
        send([...MODIFIERS.filter((m) => latched.has(m)).map((m) => NAMED[m]), ...keys]);
        if (latched.size) {
            latched.clear();
            showLatched();
        }
    }

    function keyboardOn() {
        return button.getAttribute('aria-pressed') === 'true';
    }

    function reset() {
        field.value = FILLER;
        last = FILLER;
        field.setSelectionRange(FILLER.length, FILLER.length);
    }

    function setKeyboard(on) {
        button.setAttribute('aria-pressed', String(on));
        row.hidden = !on;
        document.body.dataset.keyboard = on ? 'on' : 'off';
        if (on) {
            reset();
            field.focus({ preventScroll: true });
        } else {
            field.blur();
            focusScreen();
        }
    }

    button.addEventListener('click', () => setKeyboard(!keyboardOn()));

    // Tapping a key of the row must not take focus from the field (that would close the
    // soft keyboard) or from the screen.
    row.addEventListener('pointerdown', (event) => { if (event.target.closest('button')) event.preventDefault(); });
    row.addEventListener('mousedown', (event) => { if (event.target.closest('button')) event.preventDefault(); });
    row.addEventListener('click', (event) => {
        const key = event.target.closest('button');
        if (!key) return;
        if (key.dataset.modifier) {
            const name = key.dataset.modifier;
            if (latched.has(name)) latched.delete(name);
            else latched.add(name);
            showLatched();
        } else if (key.dataset.key && NAMED[key.dataset.key]) {
            sendKeys([NAMED[key.dataset.key]]);
        } else if (key.id === 'extra-keys-close') {
            setKeyboard(false);
            return;
        }
        // Activated from a real keyboard (Tab to it, Enter): back to the screen, or the field.
        if (row.contains(document.activeElement)) focusScreen();
    });

    field.addEventListener('keydown', (event) => {
        if (event.isComposing || event.keyCode === 229) return;  // the input event will tell
        const name = KEYDOWN_KEYS[event.key];
        if (name) {
            event.preventDefault();
            sendKeys([NAMED[name]]);
        } else if ((event.ctrlKey || event.altKey || event.metaKey) && event.key.length === 1) {
            // A real keyboard's shortcut typed into the field: the guest's, not the browser's.
            event.preventDefault();
            const mods = [event.ctrlKey && NAMED.ctrl, event.altKey && NAMED.alt, event.metaKey && NAMED.super];
            const keys = keysForChar(event.key.toLowerCase(), { unicode: true });
            if (keys) sendKeys([...mods.filter(Boolean), ...keys]);
        }
    });

    field.addEventListener('input', (event) => {
        const now = field.value;
        let same = 0;
        while (same < last.length && same < now.length && last[same] === now[same]) same++;
        for (let i = same; i < last.length; i++) sendKeys([NAMED.backspace]);
        for (const ch of now.slice(same)) {
            const keys = keysForChar(ch, { unicode: true });
            if (keys) sendKeys(keys);
        }
        last = now;
        // Keep the field's text short and its filler in place, but not in the middle of a
        // word being composed (the keyboard would lose track of it).
        if (!event.isComposing && (now.length < 8 || now.length > 4 * FILLER.length)) reset();
    });
    field.addEventListener('compositionend', () => {
        if (field.value.length < 8 || field.value.length > 4 * FILLER.length) reset();
    });

    // A real keyboard on the screen while a modifier is latched: hold the modifiers
    // around that key (noVNC sends the key itself).
    window.addEventListener('keydown', (event) => {
        const rfb = getRfb();
        if (!latched.size || !rfb || event.target === field || MODIFIER_KEYS.has(event.key)) return;
        if (!(event.target instanceof HTMLCanvasElement)) return;
        const mods = MODIFIERS.filter((m) => latched.has(m)).map((m) => NAMED[m]);
        mods.forEach(([keysym, code]) => rfb.sendKey(keysym, code, true));
        setTimeout(() => {
            [...mods].reverse().forEach(([keysym, code]) => rfb.sendKey(keysym, code, false));
            latched.clear();
            showLatched();
        }, 0);
    }, true);

    return {
        sendKeys,
        // A new connection: what was still queued for the old one is dropped.
        attach() {
            queue.clear();
        },
        // Where keyboard focus belongs: the hidden field while the soft keyboard is on.
        focusTarget() {
            return keyboardOn() ? field : null;
        },
    };
}
