// xterm.js 6's DOM renderer styles the terminal in two ways that a Content-Security-
// Policy without style-src 'unsafe-inline' refuses (ours has none):
//   - <style> elements whose text it writes (cell size, colours of the theme and of the
//     16/256-colour palette, cursor, scroll bar): refused, the terminal has no colours
//     and wrong line heights;
//   - style="" attributes set with setAttribute (24-bit colours): refused, the text
//     shows in the default colour.
// The policy leaves the CSS object model alone: constructed style sheets and
// element.style are allowed. So we watch the terminal's DOM and copy each refused
// style into one of those. The browser still logs each refusal on its console.

export function mirrorBlockedStyles(root) {
    const sheets = new Map();      // <style> element → its constructed copy
    const applied = new WeakMap(); // element → the style="" text we last applied

    function adopt() {
        const ours = new Set(sheets.values());
        const others = document.adoptedStyleSheets.filter((sheet) => !ours.has(sheet));
        document.adoptedStyleSheets = [...others, ...ours];
    }

    function copySheet(style) {
        let sheet = sheets.get(style);
        if (!sheet) {
            sheet = new CSSStyleSheet();
            sheets.set(style, sheet);
        }
        sheet.replaceSync(style.textContent);
    }

    function copyAttribute(element) {
        const text = element.getAttribute('style');
        if (text === null || applied.get(element) === text) return;
        // Through the object model: allowed, and a no-op when the attribute was not refused.
        element.style.cssText = text;
        applied.set(element, element.getAttribute('style'));
    }

    function sync(records) {
        let changed = false;
        for (const record of records) {
            if (record.type === 'attributes') {
                copyAttribute(record.target);
                continue;
            }
            const style = record.target.nodeType === Node.ELEMENT_NODE ? record.target : record.target.parentNode;
            if (style instanceof HTMLStyleElement && style.isConnected) {
                copySheet(style);  // its text changed
                changed = true;
            }
            for (const node of record.addedNodes) {
                if (node instanceof HTMLStyleElement) {
                    copySheet(node);
                    changed = true;
                } else if (node instanceof Element) {
                    // A new element may arrive with a style="" set before it was inserted.
                    if (node.hasAttribute('style')) copyAttribute(node);
                    node.querySelectorAll('[style]').forEach(copyAttribute);
                }
            }
        }
        for (const style of sheets.keys()) {
            if (!style.isConnected) {
                sheets.delete(style);
                changed = true;
            }
        }
        if (changed) adopt();
    }

    new MutationObserver(sync).observe(root, {
        subtree: true,
        childList: true,
        characterData: true,
        attributes: true,
        attributeFilter: ['style'],
    });
}
