// The first-pixel detector of the click-to-pixels benchmark (bench/pixels.py), injected into
// every page before the page's own scripts run, identically for every contender.
//
// On every animation frame it looks at each <canvas> in the document, whatever the page's
// structure, and records the first frame in which one of them (at least 100 × 100) holds more
// than one colour: the VM's screen has arrived (a canvas before the first framebuffer update
// is blank, of one colour). Times are performance.now(), i.e. milliseconds since the start of
// the navigation (before any redirect of it). It changes nothing the page uses (the WebSocket's
// times come from DevTools' network events instead: noVNC rejects a wrapped WebSocket).
(() => {
    if (window.__bench) return;
    window.__bench = { pixel: null, timeOrigin: performance.timeOrigin };

    function differs(canvas) {
        let context;
        try {
            context = canvas.getContext("2d");
        } catch (_) {
            return false;
        }
        // A WebGL canvas gives none: not what either contender draws on. (A canvas only counts
        // once it is sized, after noVNC took its own context, so this never creates one.)
        if (!context) return false;
        const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
        const pixels = new Uint32Array(data.buffer, data.byteOffset, data.length / 4);
        const first = pixels[0];
        for (let i = 1; i < pixels.length; i++) {
            if (pixels[i] !== first) return true;
        }
        return false;
    }

    function look() {
        for (const canvas of document.getElementsByTagName("canvas")) {
            if (canvas.width >= 100 && canvas.height >= 100 && differs(canvas)) {
                const t = performance.now();
                window.__bench.pixel = { t, width: canvas.width, height: canvas.height };
                return;
            }
        }
        requestAnimationFrame(look);
    }
    requestAnimationFrame(look);
})();
