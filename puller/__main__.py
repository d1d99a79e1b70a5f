from puller.cli import main

main()
