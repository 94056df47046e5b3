import sys

if sys.argv[1:2] == ["train"]:
    # Inside an image without ft installed: the torch-free library only, no typer or rich.
    from launcher.train import main as train

    sys.exit(train(sys.argv[2:]))

from launcher.cli import main

main()
