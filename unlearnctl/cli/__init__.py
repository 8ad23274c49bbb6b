"""The command-line interface: the only package that imports typer and rich.

Commands are thin: parse, build a config, call one library function, render. ``app.py`` holds the Typer
app and the exception → exit-code mapping; each ``*_cmds.py`` module registers its commands on it.
"""
