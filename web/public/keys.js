// Keys as the console page sends them: named keys, combinations, and characters of text.
//
// A key is a [keysym, KeyboardEvent.code] pair. With a code, noVNC sends QEMU's
// scancode-based key event, which does not depend on the guest's keymap; without one
// (characters of text) QEMU maps the keysym with its keymap.

import KeyTable from './novnc/core/input/keysym.js';
import keysyms from './novnc/core/input/keysymdef.js';

const K = KeyTable;

// Keys a phone keyboard lacks, and the modifiers that can be latched for the next key.
export const NAMED = {
    esc: [K.XK_Escape, 'Escape'],
    tab: [K.XK_Tab, 'Tab'],
    enter: [K.XK_Return, 'Enter'],
    backspace: [K.XK_BackSpace, 'Backspace'],
    delete: [K.XK_Delete, 'Delete'],
    home: [K.XK_Home, 'Home'],
    end: [K.XK_End, 'End'],
    pageup: [K.XK_Page_Up, 'PageUp'],
    pagedown: [K.XK_Page_Down, 'PageDown'],
    up: [K.XK_Up, 'ArrowUp'],
    down: [K.XK_Down, 'ArrowDown'],
    left: [K.XK_Left, 'ArrowLeft'],
    right: [K.XK_Right, 'ArrowRight'],
    ctrl: [K.XK_Control_L, 'ControlLeft'],
    alt: [K.XK_Alt_L, 'AltLeft'],
    super: [K.XK_Super_L, 'MetaLeft'],
    shift: [K.XK_Shift_L, 'ShiftLeft'],
};
for (let n = 1; n <= 12; n++) NAMED[`f${n}`] = [K.XK_F1 + n - 1, `F${n}`];

export const MODIFIERS = ['ctrl', 'alt', 'super'];

// The Keys menu: each combination pressed in order and released in reverse.
export const COMBOS = {
    'ctrl-alt-f1': ['ctrl', 'alt', 'f1'],
    'ctrl-alt-f2': ['ctrl', 'alt', 'f2'],
    'ctrl-alt-f7': ['ctrl', 'alt', 'f7'],
    'ctrl-alt-backspace': ['ctrl', 'alt', 'backspace'],
    'alt-tab': ['alt', 'tab'],
    'alt-f4': ['alt', 'f4'],
    'esc': ['esc'],
    'ctrl-c': ['ctrl', [K.XK_c, 'KeyC']],
    'ctrl-d': ['ctrl', [K.XK_d, 'KeyD']],
    'super': ['super'],
};

// A combination's keys as [keysym, code] pairs: names from NAMED, or pairs as they are.
export function resolve(combo) {
    return combo.map((key) => (typeof key === 'string' ? NAMED[key] : key));
}

export function pressCombo(rfb, keys) {
    keys.forEach(([keysym, code]) => rfb.sendKey(keysym, code, true));
    [...keys].reverse().forEach(([keysym, code]) => rfb.sendKey(keysym, code, false));
}

// Characters that need Shift on a US keyboard. QEMU turns a keysym into a scancode with
// its keymap: 'A' and 'a' share one key, so without a real Shift press the guest would
// see 'a'.
const SHIFTED = /[A-Z~!@#$%^&*()_+{}|:"<>?]/;

// The keys that type one character of text, or null when it cannot be typed.
// Printable ASCII, Tab and newlines (as Return) are typed as on a US keyboard; any other
// character as its Unicode keysym (which QEMU's keymap may not know).
export function keysForChar(ch, { unicode = false } = {}) {
    if (ch === '\n' || ch === '\r') return [NAMED.enter];
    if (ch === '\t') return [NAMED.tab];
    if (ch >= ' ' && ch <= '~') {
        const key = [ch.charCodeAt(0), undefined];  // ASCII keysyms are the char codes
        return SHIFTED.test(ch) ? [NAMED.shift, key] : [key];
    }
    if (!unicode) return null;
    const code = ch.codePointAt(0);
    if (code < 0x20 || (code >= 0x7f && code < 0xa0)) return null;
    return [[keysyms.lookup(code), undefined]];
}
