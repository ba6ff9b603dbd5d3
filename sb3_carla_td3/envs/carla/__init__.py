"""The CARLA 0.9.16 driving env, one module per concern.

``config`` (options, ports), ``connection`` (client, world settings, reconnects), ``server`` (an optional server
process), ``actors`` and ``sensors`` (spawning, frame-matched camera and collision/lane events), ``routes``
(OpenDRIVE route planning), ``rewards`` (reward terms), ``episode`` (routes and NPCs per reset), ``env``
(:class:`CarlaEnv`), ``vec_env`` (many servers, restarted workers), ``api`` (the carla module's surface this package
uses) and ``fake`` / ``fake_objects`` (a server test double). Needs the ``[carla]`` extra only to talk to a server.
"""
