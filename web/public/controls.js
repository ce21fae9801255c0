// The console page's controls, wired to whichever RFB connection is current: console.js
// owns the connection and calls attach() with every new RFB object; the controls read
// the page's state from the DOM (body's data-state and data-mode) and never connect.

import { setupGuestClipboard } from './clipboard.js';
import { setupScaling } from './scaling.js';
import { setupScreenshot } from './screenshot.js';
import { setupSettings } from './settings.js';
import { setupToolbar } from './toolbar.js';
import { setupTouch } from './touch.js';
import { setupTyping } from './typing.js';

export function setupControls(getRfb) {
    // Where keys typed next should go: the VM's screen, or the on-screen keyboard's field.
    function focusScreen() {
        const field = touch.focusTarget();
        if (field) field.focus({ preventScroll: true });
        else if (getRfb()) getRfb().focus();
    }
    const touch = setupTouch(getRfb, focusScreen);
    setupToolbar(getRfb, focusScreen, touch.sendKeys);
    setupTyping(getRfb, focusScreen);
    setupScreenshot(getRfb);
    const parts = [touch, setupScaling(getRfb, focusScreen), setupSettings(getRfb), setupGuestClipboard(focusScreen)];

    return {
        attach(rfb) {
            globalThis.rfb = rfb;  // for the tests and the browser's console, as the terminal page's `term`
            parts.forEach((part) => part.attach(rfb));
        },
    };
}
