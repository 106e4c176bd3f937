"""`avatarcam connect`: a laptop's camera drives an avatar on a remote `avatarcam serve --source
webrtc`, and the avatar comes back into the laptop's own sinks (virtual camera, window, file).

The pieces are the service's own: a `Source` feeds an `AvatarTrack` (the outgoing WebRTC track),
the returned track is read by a `TrackSource`, and frames go to the same `Sink`s `serve` uses
(the virtual camera keeps its own rate and shows a "reconnecting" card when the link is down).
What is new here is the client's life around them: `config` (options), `link` (one peer
connection), `stats` (glass-to-glass, fps, drops, RTT, audio delay), `client` (startup, main
loop with reconnects, shutdown).
"""
