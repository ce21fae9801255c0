// What the broker's WebSocket close codes mean (broker/errors.py), shared by the VNC
// page and the terminal page. The broker sends a reason with every close, so these are
// only the fallback when a proxy drops it. Texts that depend on the console's kind
// (VNC or serial) are passed in by each page as `kindReasons`.

const CLOSE_REASONS = {
    4100: 'No console link token was given.',
    4101: 'This console link is not valid.',
    4102: 'This console link has expired; ask for a new one.',
    4103: 'This console link was already used; ask for a new one.',
    4104: 'The virtual machine stopped after this link was made; ask for a new one.',
    4105: 'This console session has expired; ask for a new console link.',
    4106: 'Consoles cannot be opened from this web page’s origin.',
    4200: 'The virtual machine does not exist (any more).',
    4201: 'The virtual machine is not running.',
    4202: 'The virtual machine has no such console.',
    4203: 'The console could not be reached.',
    4204: 'libvirt is not reachable right now.',
    4205: 'libvirt refused the request.',
    4208: 'Another client is using this serial console.',
    4209: 'Another user has exclusive control of this console; only view-only links may join.',
    4300: 'The virtual machine stopped.',
    4301: 'The console closed the connection.',
    4302: 'The broker only relays binary WebSocket messages.',
    4303: 'Another session took over this console.',
    4304: 'Another user took exclusive control of this console.',
    4305: 'An administrator ended this console session.',
    4400: 'The broker serves as many consoles as it may; try again later.',
    4401: 'This console already has as many viewers as allowed.',
    4402: 'Too many consoles are being opened at once; try again in a moment.',
    4403: 'The console was closed after a time without input.',
    4404: 'The console reached its maximum session length.',
    1000: 'The connection was closed.',
    1001: 'The broker is shutting down; try again in a moment.',
    1005: 'The connection was closed without a reason.',
    1006: 'Connection lost (network or proxy).',
    1009: 'A message was larger than the broker accepts.',
    1011: 'The connection stopped answering (keepalive), or the broker hit an internal error.',
};

// The words for a close: the broker's own reason when it sent one, else ours.
export function closeReason(event, kindReasons = {}) {
    return event.reason || kindReasons[event.code] || CLOSE_REASONS[event.code]
        || `The connection was closed (code ${event.code}).`;
}
