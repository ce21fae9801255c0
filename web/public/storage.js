// The page's remembered choices, in localStorage when the browser lets us have it: a
// page in a third-party frame, or a browser set to refuse site data, throws on every
// access. Then choices last until the page is closed, and nothing breaks.

export function load(key, fallback = null) {
    try {
        const value = localStorage.getItem(key);
        return value === null ? fallback : value;
    } catch {
        return fallback;
    }
}

export function save(key, value) {
    try {
        localStorage.setItem(key, String(value));
    } catch { /* storage refused: the choice holds for this page only */ }
}
