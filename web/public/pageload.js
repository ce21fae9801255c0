// A classic script, run before each console page's module: if the module (the page's
// bundle, web/build.mjs) cannot be fetched (a broker without its build, a proxy's 404), the module
// never runs and the page would say "Loading…" for ever. Say why instead.
// Resource errors do not bubble, hence the capture on window.
window.addEventListener('error', (event) => {
    if (!(event.target instanceof HTMLScriptElement)) return;
    document.body.dataset.state = 'error';
    document.getElementById('status').textContent =
        'This page could not load its scripts from the console broker. Reload the page; if that does not '
        + 'help, the broker’s web files are incomplete.';
}, true);
