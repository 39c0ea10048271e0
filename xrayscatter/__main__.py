from xrayscatter.cli import main

main()
