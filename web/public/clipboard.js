// The guest's clipboard, when its VNC server sends it (noVNC's "clipboard" event; QEMU
// does with a clipboard agent in the guest): shown under the toolbar with a Copy button,
// never written over what the user has in the text box.

export function setupGuestClipboard(focusScreen) {
    const $ = (id) => document.getElementById(id);
    const panel = $('guest-clipboard');
    const text = $('guest-clipboard-text');
    const copy = $('guest-clipboard-copy');
    const note = $('guest-clipboard-note');

    copy.addEventListener('click', async () => {
        try {
            await navigator.clipboard.writeText(text.value);
            note.textContent = 'Copied.';
        } catch {
            // No clipboard API (a page over plain HTTP, a refused permission): select the
            // text, so the browser's own copy works.
            text.focus();
            text.select();
            note.textContent = 'Press Ctrl+C (or use the browser’s menu) to copy the selected text.';
            return;  // focus stays on the text for that copy
        }
        focusScreen();
    });
    $('guest-clipboard-close').addEventListener('click', () => {
        panel.hidden = true;
        focusScreen();
    });

    return {
        attach(rfb) {
            rfb.addEventListener('clipboard', (event) => {
                text.value = event.detail.text;
                note.textContent = '';
                panel.hidden = false;
            });
        },
    };
}
