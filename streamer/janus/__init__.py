"""The Janus VideoRoom client (`client`), its server's generated config and process (`server`).

One VideoRoom room per avatar stream: the driver publishes its camera as `client.DRIVER`, the
avatar session subscribes to it and publishes the avatar as `client.AVATAR`, viewers subscribe
to that. Everyone only dials out to Janus; Janus relays each published stream to every
subscriber, so the avatar is encoded once per session however many watch it.
"""
