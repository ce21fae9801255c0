// Key events from the on-screen keyboard, paced like typed text (see typing.js), so that
// a long burst (a phone keyboard pasting or rewriting words in the hidden field) cannot
// outrun the guest. The first event goes out at once; the rest one every
// KEY_EVENT_INTERVAL_MS, in order.
//
// The queue holds at most KEY_QUEUE_MAX events (about 25 s of keys): a combination that
// does not fit is dropped whole, so every press keeps its release, and `dropped` is told.
// A new connection (a new RFB) starts with an empty queue: the rest of a burst, and the
// releases of keys pressed on the old connection, mean nothing to it.

import { KEY_EVENT_INTERVAL_MS } from './typing.js';

export const KEY_QUEUE_MAX = 2000;

export function keyQueue(getRfb, dropped = () => {}) {
    const queue = [];  // [keysym, code, down]
    let timer = 0;
    let lost = 0;      // combinations dropped since the queue was last empty

    function next() {
        timer = 0;
        const event = queue.shift();
        if (!event) {
            lost = 0;
            return;
        }
        const rfb = getRfb();
        if (rfb) rfb.sendKey(...event);
        timer = setTimeout(next, KEY_EVENT_INTERVAL_MS);
    }

    return {
        // Queues a combination: pressed in order, released in reverse.
        send(keys) {
            if (queue.length + 2 * keys.length > KEY_QUEUE_MAX) {
                lost += 1;
                dropped(lost);
                return;
            }
            keys.forEach(([keysym, code]) => queue.push([keysym, code, true]));
            [...keys].reverse().forEach(([keysym, code]) => queue.push([keysym, code, false]));
            if (!timer) next();
        },
        clear() {
            queue.length = 0;
            clearTimeout(timer);
            timer = 0;
            lost = 0;
        },
    };
}
