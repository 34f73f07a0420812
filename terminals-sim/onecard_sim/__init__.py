"""Terminal simulator for the one-card switch: thousands of tills, shower controllers,
dorm meters and recharge services over the wire protocol, with a money check at the end."""
