package main

// Greeting is the word the Greeter service puts in front of the name.
// Tests rewrite the line below with a regex; keep its exact format.
const Greeting = "Hello"
