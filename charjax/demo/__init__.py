"""A local web page where one draws a character and sees a trained run's prediction.

`python -m charjax.demo --workdir RUN` (see `charjax.demo.__main__`); the app itself is
`charjax.demo.app.create_app`, so it can be mounted or tested without a server.
"""
