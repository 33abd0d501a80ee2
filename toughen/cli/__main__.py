from toughen.cli import main

main()
