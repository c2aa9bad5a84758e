#!/bin/sh
# Prints a line every few seconds, forever.
while true; do
    echo "$GREETING at $(date)"
    sleep 5
done
