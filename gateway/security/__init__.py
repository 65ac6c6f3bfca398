"""Security of the gateway: device and operator authentication, topic authorisation (ACL),
TLS, per-device rate limits and input limits. See README.md, section "Security".
"""
