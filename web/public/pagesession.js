// The console page's session, shared by the VNC page and the terminal page: the cookie
// says which console this page may open (GET ./session, relative to the page itself, not
// to this module). Resolves to { session } or to { error }, a sentence for the page.

export async function fetchSession() {
    let response, body;
    try {
        response = await fetch('./session', { credentials: 'same-origin', cache: 'no-store' });
        body = await response.json().catch(() => null);
    } catch {
        return { error: 'The console broker could not be reached. Check the network and reconnect.' };
    }
    if (!response.ok || !body || !body.domain) {
        const message = body && body.error && body.error.message;
        return { error: message || `The console session could not be opened (HTTP ${response.status}).` };
    }
    return { session: body };
}
