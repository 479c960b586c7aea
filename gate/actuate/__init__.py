"""The lane's pins: the pure lane machine (`machine`: releases, passages, the mode and its overrides), the lane's
mode model (`mode`), pin factories and the self-test. Its public face is `gate.actuator`, the gpiozero adapter that
drives relay, indicator and buzzer.
"""
