"""What runs inside the pods. Depends on lepton.api (the contract) only, never on the controller."""
