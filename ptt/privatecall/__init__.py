"""Private calls between two users (TS 24.379 §11 behaviour over our control channel, TS 33.180 §7.3 keying).

``pck``: the private call key (PCK, purpose tag 1) in a MIKEY-SAKKE I_MESSAGE from caller to callee;
``media``: SRTP of the call under the PCK (CS-ID 0 caller, 1 callee, MKI = PCK-ID); ``messages``: the control
channel messages; ``machine``: the caller's and callee's call state machine; ``router``: the server's side.
"""
