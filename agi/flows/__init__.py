"""Call flow handlers, one module per feature, chosen by the AGI request path."""

from . import after_dial, callee, inmate, settle

ROUTES = {
    "inmate": inmate.run,
    "callee": callee.run,
    "after-dial": after_dial.run,
    "settle": settle.run,
}
