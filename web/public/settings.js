// Picture quality and compression for slow links: noVNC's JPEG quality (0–9) and zlib
// compression (0–9) levels, sent to the VNC server as pseudo-encodings. Lower quality
// and higher compression trade picture and CPU for bandwidth. Remembered by the browser.

import { load, save } from './storage.js';

const SETTINGS = [
    // [select id, RFB property, storage key, noVNC's default]
    ['quality', 'qualityLevel', 'console.quality', 6],
    ['compression', 'compressionLevel', 'console.compression', 2],
];

export function setupSettings(getRfb) {
    const selects = SETTINGS.map(([id, property, key, fallback]) => {
        const select = document.getElementById(id);
        const saved = Number.parseInt(load(key, ''), 10);
        select.value = String(Number.isInteger(saved) && saved >= 0 && saved <= 9 ? saved : fallback);
        select.addEventListener('change', () => {
            save(key, select.value);
            const rfb = getRfb();
            if (rfb) rfb[property] = Number(select.value);
        });
        return [select, property];
    });

    return {
        attach(rfb) {
            for (const [select, property] of selects) rfb[property] = Number(select.value);
        },
    };
}
