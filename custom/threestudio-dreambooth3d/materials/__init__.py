"""threestudio materials (registered by :func:`threestudio_dreambooth3d.registration.register`)."""
