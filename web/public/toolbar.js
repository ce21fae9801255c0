// The toolbar's own behaviour: keyboard focus goes back to the screen after every action
// (so the next key typed reaches the guest, not the button or a select that arrow keys
// would change), Fullscreen, Ctrl-Alt-Del, the Keys menu, and folding the toolbar away.

import { COMBOS, resolve } from './keys.js';

export function setupToolbar(getRfb, focusScreen, sendKeys) {
    const $ = (id) => document.getElementById(id);
    const toolbar = $('toolbar');

    // After a button's own handler (listeners on the toolbar run after the button's):
    // back to the screen, unless the button says it keeps focus (data-keep-focus).
    toolbar.addEventListener('click', (event) => {
        const button = event.target.closest('button');
        if (!button || 'keepFocus' in button.dataset) return;
        closeMenus();
        focusScreen();
    });
    // A choice made in a select: the select lets go, so arrow keys go to the guest again.
    toolbar.addEventListener('change', (event) => {
        if (!(event.target instanceof HTMLSelectElement)) return;
        closeMenus();
        focusScreen();
    });

    // Menus are <details>: Enter or Space on the summary opens one, Tab walks its
    // buttons, Esc closes it; a click elsewhere closes any that is open.
    const menus = [...toolbar.querySelectorAll('details.menu')];
    function closeMenus(except = null) {
        menus.forEach((menu) => { if (menu !== except) menu.open = false; });
    }
    menus.forEach((menu) => {
        menu.addEventListener('toggle', () => { if (menu.open) closeMenus(menu); });
        menu.addEventListener('keydown', (event) => {
            if (event.key !== 'Escape' || !menu.open) return;
            event.preventDefault();
            menu.open = false;
            menu.querySelector('summary').focus();
        });
    });
    document.addEventListener('pointerdown', (event) => {
        if (!event.target.closest('details.menu')) closeMenus();
    });

    toolbar.querySelectorAll('[data-combo]').forEach((button) => {
        button.addEventListener('click', () => {
            const combo = COMBOS[button.dataset.combo];
            if (combo) sendKeys(resolve(combo));
        });
    });

    $('ctrl-alt-del').addEventListener('click', () => {
        const rfb = getRfb();
        if (rfb) rfb.sendCtrlAltDel();
    });

    // Full screen takes the toolbar along, so Ctrl-Alt-Del stays within reach.
    const fullscreen = $('fullscreen');
    fullscreen.disabled = !document.fullscreenEnabled;
    fullscreen.addEventListener('click', () => {
        if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
        else $('app').requestFullscreen().catch(() => {}).finally(focusScreen);
    });
    document.addEventListener('fullscreenchange', () => {
        fullscreen.textContent = document.fullscreenElement ? 'Exit fullscreen' : 'Fullscreen';
        focusScreen();
    });

    // On a phone the toolbar takes a good part of the screen: it folds away, leaving a
    // small handle to bring it back.
    const show = $('show-toolbar');
    function showToolbar(shown) {
        document.body.dataset.toolbar = shown ? 'shown' : 'hidden';
        show.hidden = shown;
        focusScreen();
    }
    $('hide-toolbar').addEventListener('click', () => showToolbar(false));
    show.addEventListener('click', () => showToolbar(true));
}
