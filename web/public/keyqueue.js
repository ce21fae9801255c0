// Key events from the on-screen keyboard, paced like typed text (see typing.js), so that
// a long burst (a phone keyboard pasting or rewriting words in the hidden field) cannot
// outrun the guest. The first event goes out at once; the rest one every
// KEY_EVENT_INTERVAL_MS, in order.

import { KEY_EVENT_INTERVAL_MS } from './typing.js';

export function keyQueue(getRfb) {
    const queue = [];  // [keysym, code, down]
    let timer = 0;

    function next() {
        timer = 0;
        const event = queue.shift();
        if (!event) return;
        const rfb = getRfb();
        if (rfb) rfb.sendKey(...event);
        timer = setTimeout(next, KEY_EVENT_INTERVAL_MS);
    }

    // Queues a combination: pressed in order, released in reverse.
    return function send(keys) {
        keys.forEach(([keysym, code]) => queue.push([keysym, code, true]));
        [...keys].reverse().forEach(([keysym, code]) => queue.push([keysym, code, false]));
        if (!timer) next();
    };
}
