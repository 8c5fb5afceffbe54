from i2i.cli import main

main()
