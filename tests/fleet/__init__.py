"""Real processes behind one store: callbacks across replicas, arq workers, bulk runs."""
