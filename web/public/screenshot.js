// "Screenshot": the screen as the page shows it, saved as a PNG file named after the VM
// and the time (web-1-2025-05-01-142530.png). The canvas holds the VM's whole screen at
// its own resolution, whatever the scaling.

function stamp(date) {
    const two = (n) => String(n).padStart(2, '0');
    return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())}-`
        + `${two(date.getHours())}${two(date.getMinutes())}${two(date.getSeconds())}`;
}

// A VM's name as a file name: no path separators, controls or characters file systems refuse.
export function fileName(domain, date = new Date()) {
    const safe = domain.replace(/[^\p{L}\p{N}._-]+/gu, '_').replace(/^[._]+/, '').slice(0, 80) || 'console';
    return `${safe}-${stamp(date)}.png`;
}

export function setupScreenshot(getRfb) {
    const button = document.getElementById('screenshot');
    const note = document.getElementById('scale-note');
    button.addEventListener('click', () => {
        const rfb = getRfb();
        const canvas = document.querySelector('#screen canvas');
        if (!rfb || !canvas || !canvas.width) {
            note.textContent = 'No picture to save yet.';
            note.hidden = false;
            return;
        }
        const name = fileName(document.getElementById('domain-name').textContent || 'console');
        rfb.toBlob((blob) => {
            if (!blob) return;
            const url = URL.createObjectURL(blob);
            const link = document.createElement('a');
            link.href = url;
            link.download = name;
            document.body.append(link);
            link.click();
            link.remove();
            setTimeout(() => URL.revokeObjectURL(url), 10_000);
        }, 'image/png');
    });
}
