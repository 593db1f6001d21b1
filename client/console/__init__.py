"""The dispatcher console in the browser (``ptt-console``, issue 15): a client of the group server that serves a
local page (``client.console.web``), bridges it to its session (``client.console.bridge``, ``client.console.media``)
and to the dispatcher API (``client.console.upstream``)."""
