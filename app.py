"""Run the audio server: ``python app.py`` (``--help`` lists the settings).

The server's entry point lives in the package (``audioserver.server``), so the
installed ``audio-server`` command runs the very same code.
"""

from audioserver.server import main

if __name__ == "__main__":
    main()
