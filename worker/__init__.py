"""QueueNet model worker: loads the network once and answers queued images in batches.

Never imports Flask; talks to the web tier only through Redis and ``protocol``.
"""
