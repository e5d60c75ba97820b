from emo8.cli import main

main()
