"""Keys and encryption at rest, below both apps.

:mod:`vault.crypto` is the pure format (streamed AES-256-GCM chunks, wrapped data keys);
:mod:`vault.keystore` reads the configured master keys; :mod:`vault.fingerprints` (pure) names
each key without revealing it, and :mod:`vault.registry` compares a process's keys with the
fingerprints the database recorded (:class:`vault.models.MasterKeyRecord`). ``experiments``
stores artifacts with them and ``disclosure`` signs and exports with them; neither app is
imported here.
"""
